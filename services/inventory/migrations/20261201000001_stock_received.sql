-- Every unit ever received (restocks, the first one included), so stock conservation can be
-- checked: received - committed = available + reserved, where committed and reserved are the
-- lines of committed and held reservations (`shopctl check`).
ALTER TABLE stock ADD COLUMN received BIGINT;
UPDATE stock s SET received = s.available + s.reserved + coalesce((
    SELECT sum(l.quantity) FROM reservation_line l JOIN reservation r USING (order_id)
    WHERE r.status = 'committed' AND r.tenant_id = s.tenant_id AND l.sku = s.sku), 0);
ALTER TABLE stock ALTER COLUMN received SET NOT NULL, ALTER COLUMN received SET DEFAULT 0;
ALTER TABLE stock ADD CONSTRAINT stock_received_covers CHECK (received >= available + reserved);
