-- The command in flight: the event id of its outbox row. The timeout sweep reads the row's
-- publication time, so a step's clock starts when its command is published (domain/clock.rs).
ALTER TABLE saga ADD COLUMN command_id UUID;

-- The sagas still running, for PlaceOrder's admission bound (count of in-flight sagas).
CREATE INDEX saga_open_idx ON saga (saga_id) WHERE finished_at IS NULL;
