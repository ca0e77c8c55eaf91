-- One row per order that ever asked for a shipment. 'refused' and 'cancelled' rows stay, so a
-- repeated or late command gets the same answer (a create after a cancel is refused).
CREATE TABLE shipment (
    order_id    TEXT        PRIMARY KEY,
    shipment_id UUID        NOT NULL UNIQUE,
    tenant_id   TEXT        NOT NULL,
    status      TEXT        NOT NULL CHECK (status IN ('created', 'in_transit', 'delivered', 'refused', 'cancelled')),
    reason      TEXT,
    name        TEXT        NOT NULL DEFAULT '',
    line1       TEXT        NOT NULL DEFAULT '',
    line2       TEXT        NOT NULL DEFAULT '',
    city        TEXT        NOT NULL DEFAULT '',
    postal_code TEXT        NOT NULL DEFAULT '',
    country     TEXT        NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
