-- A dead letter keeps why it was refused (also in the `dlq.error` header of its copy on
-- `<topic>.dlq`), so `shopctl outbox list` can show it beside the parked outbox rows.
ALTER TABLE inbox ADD COLUMN error TEXT;
