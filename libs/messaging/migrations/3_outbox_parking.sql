-- Parking: a row the broker refuses for good (too large, unknown topic, not authorised) is set
-- aside after a few attempts instead of being retried for ever. Later rows of the same key wait
-- behind it (per-key order); every other key of its bucket moves on. `shopctl outbox redrive`
-- puts parked rows back in line.
ALTER TABLE outbox ADD COLUMN parked_at TIMESTAMPTZ;

CREATE INDEX outbox_parked_idx ON outbox (partition_key, id) WHERE parked_at IS NOT NULL;
