-- Orders become event-sourced. The event stream is the truth; `order_summary` and
-- `customer_orders` are read models built from it (see src/projection.rs, which creates them);
-- `saga` stays as the index the timeout sweep and ListSagas read, written in the same
-- transaction as the events it is derived from.
--
-- Orders stored before this migration (state-based rows from the first release of the demo)
-- are not carried over: they were demo data. A production migration would import each row as
-- an `order_placed` event plus its closing event.
DROP TABLE saga_step;
ALTER TABLE saga DROP CONSTRAINT saga_saga_id_fkey;
DROP TABLE orders;
TRUNCATE saga;

-- Idempotency keys: the same key returns the same order.
CREATE TABLE order_keys (
    tenant_id       TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    order_id        UUID        NOT NULL UNIQUE,
    fingerprint     TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);

-- The event store: append-only, one stream per order, versions 1, 2, 3, ... with no gaps.
-- `position` orders all events; `tx` (the writing transaction's id) lets a projection read in
-- commit-safe order: events of transactions older than every running one can no longer be
-- joined by an earlier-numbered event (see projection.rs).
CREATE TABLE events (
    position       BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx             BIGINT      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    stream_id      UUID        NOT NULL,
    version        INT         NOT NULL CHECK (version > 0),
    event_type     TEXT        NOT NULL,
    schema_version INT         NOT NULL,
    payload        JSONB       NOT NULL,
    -- tenant_id, correlation_id, causation_id
    metadata       JSONB       NOT NULL DEFAULT '{}',
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
);
CREATE INDEX events_tx_idx ON events (tx, position);

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event store is append-only';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

-- Wakes the projection at commit (it also polls).
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Snapshots: a cache of the aggregate at some version, never the truth.
CREATE TABLE snapshots (
    stream_id      UUID        PRIMARY KEY,
    version        INT         NOT NULL,
    schema_version INT         NOT NULL,
    state          JSONB       NOT NULL,
    taken_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Where each projection is, and which generation of its tables the views point at.
CREATE TABLE projection_checkpoint (
    name          TEXT        PRIMARY KEY,
    generation    INT         NOT NULL,
    last_tx       BIGINT      NOT NULL,
    last_position BIGINT      NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
