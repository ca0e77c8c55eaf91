-- As the outbox's trigger (shop-messaging migration 5): the order service wakes its projection
-- in-process and connects with `shop.notify = off`; other writers still notify.
CREATE OR REPLACE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('shop.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('order_events', '');
    END IF;
    RETURN NULL;
END $$;
