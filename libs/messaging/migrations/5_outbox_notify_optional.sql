-- NOTIFY only for writers outside the service's process. PostgreSQL serialises every notifying
-- commit in the cluster (a global lock held through the WAL flush), which capped all outbox
-- writes together; the services wake their relay in-process (src/wake.rs) and connect with
-- `shop.notify = off`. Anyone else (psql, shopctl, tests) still wakes the relays.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('shop.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('outbox', '');
    END IF;
    RETURN NULL;
END
$$;
