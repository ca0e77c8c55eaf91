-- Stock per tenant and SKU. The CHECKs are the last line of defence against overselling:
-- the reservation code locks the rows first, so they never fire in normal operation.
CREATE TABLE stock (
    tenant_id  TEXT        NOT NULL,
    sku        TEXT        NOT NULL,
    available  BIGINT      NOT NULL CHECK (available >= 0),
    reserved   BIGINT      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, sku)
);

-- One per order that ever asked. 'rejected' and 'released' rows are kept so that a repeated or
-- late command gets the same answer (a reserve after a release is refused, never applied).
CREATE TABLE reservation (
    order_id   TEXT        PRIMARY KEY,
    tenant_id  TEXT        NOT NULL,
    status     TEXT        NOT NULL CHECK (status IN ('reserved', 'rejected', 'released', 'committed')),
    reason     TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE reservation_line (
    order_id TEXT   NOT NULL REFERENCES reservation (order_id),
    sku      TEXT   NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
