-- The transactional outbox: an event row commits in the same transaction as the state change
-- it describes; the relay publishes it to Kafka afterwards.
CREATE TABLE outbox (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      UUID        NOT NULL UNIQUE,
    topic         TEXT        NOT NULL,
    -- The Kafka key: the aggregate id. Events with one key are published in id order.
    partition_key TEXT        NOT NULL,
    -- fnv1a(partition_key) % 64. A relay owns whole buckets while it publishes them, so two
    -- relays never publish events of one key at the same time.
    bucket        SMALLINT    NOT NULL CHECK (bucket BETWEEN 0 AND 63),
    event_type    TEXT        NOT NULL,
    -- The protobuf-encoded shop.events.v1.EventEnvelope: published byte for byte.
    payload       BYTEA       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    attempts      INT         NOT NULL DEFAULT 0,
    last_error    TEXT
);

CREATE INDEX outbox_pending_idx ON outbox (bucket, id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- One row per bucket; relays claim buckets with FOR UPDATE SKIP LOCKED.
CREATE TABLE outbox_bucket (bucket SMALLINT PRIMARY KEY);
INSERT INTO outbox_bucket (bucket) SELECT generate_series(0, 63);

-- Wake relays at commit (one notification per transaction, however many rows it inserted).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
