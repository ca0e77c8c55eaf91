-- Accounts and their ledger: balance = opening_balance + sum(movement.amount_minor), always.
-- Money is integer minor units (cents), never floating point.
CREATE TABLE account (
    account_id       TEXT        PRIMARY KEY,
    tenant_id        TEXT        NOT NULL,
    currency         TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    opening_minor    BIGINT      NOT NULL CHECK (opening_minor >= 0),
    balance_minor    BIGINT      NOT NULL CHECK (balance_minor >= 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE movement (
    movement_id  BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   TEXT        NOT NULL REFERENCES account (account_id),
    order_id     TEXT        NOT NULL,
    kind         TEXT        NOT NULL CHECK (kind IN ('charge', 'refund')),
    -- negative for a charge, positive for a refund
    amount_minor BIGINT      NOT NULL CHECK (amount_minor <> 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX movement_account_idx ON movement (account_id, movement_id);

-- One row per order that ever asked: the charge happens at most once, whatever the redeliveries
-- and retries, and a repeated command gets the first answer.
CREATE TABLE charge (
    order_id     TEXT        PRIMARY KEY,
    account_id   TEXT        NOT NULL,
    amount_minor BIGINT      NOT NULL CHECK (amount_minor >= 0),
    currency     TEXT        NOT NULL,
    status       TEXT        NOT NULL CHECK (status IN ('charged', 'declined', 'refunded')),
    reason       TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
