-- Orders and their sagas. (The event-sourced store and read models replace `orders` later.)
CREATE TABLE orders (
    order_id           UUID        PRIMARY KEY,
    tenant_id          TEXT        NOT NULL,
    idempotency_key    TEXT        NOT NULL,
    fingerprint        TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    -- shop.order.v1 line items and address, protobuf-encoded: the service reads them back whole.
    items              BYTEA       NOT NULL,
    shipping_address   BYTEA       NOT NULL,
    total_minor        BIGINT      NOT NULL CHECK (total_minor >= 0),
    currency           TEXT        NOT NULL,
    payment_account_id TEXT        NOT NULL,
    status             TEXT        NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'CANCELLED')),
    cancel_reason      TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX orders_customer_idx ON orders (tenant_id, customer_id, created_at DESC, order_id);

-- One saga per order (saga_id = order_id). `deadline` is when the command in flight times out.
CREATE TABLE saga (
    saga_id       UUID        PRIMARY KEY REFERENCES orders (order_id),
    state         TEXT        NOT NULL,
    -- compensations still to run, next first, e.g. {charge_payment,reserve_stock}
    to_compensate TEXT[]      NOT NULL DEFAULT '{}',
    attempts      INT         NOT NULL,
    deadline      TIMESTAMPTZ,
    reason        TEXT,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ
);
CREATE INDEX saga_deadline_idx ON saga (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX saga_state_idx ON saga (state, created_at, saga_id);

-- The timeline of each step and compensation, for GetSaga.
CREATE TABLE saga_step (
    saga_id     UUID        NOT NULL REFERENCES saga (saga_id),
    step        TEXT        NOT NULL,
    status      TEXT        NOT NULL,
    attempts    INT         NOT NULL DEFAULT 1,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    last_error  TEXT,
    PRIMARY KEY (saga_id, step)
);
