-- The two-phase-commit coordinator's log (src/twopc/): one row per order placed with 2PC,
-- written before any participant is asked to prepare (so recovery knows of every transaction
-- that may be in doubt: no row means never prepared, presumed abort). The decision is the
-- commit that moves `state` from 'preparing' to 'committing' or 'aborting' together with the
-- order's own events; phase two then commits or rolls back every participant and ends the row.
CREATE TABLE twopc (
    order_id    UUID PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('preparing', 'committing', 'aborting', 'committed', 'aborted')),
    -- The PlaceOrder request (protobuf): what phase one asks of the participants, and what
    -- recovery records on the order's stream when it aborts a transaction it finds undecided.
    request     BYTEA NOT NULL,
    reason      TEXT,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at  TIMESTAMPTZ,
    ended_at    TIMESTAMPTZ
);

-- Recovery reads the rows not ended yet.
CREATE INDEX twopc_open_idx ON twopc (started_at) WHERE ended_at IS NULL;
