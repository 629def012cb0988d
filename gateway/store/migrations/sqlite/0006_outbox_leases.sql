-- A lease now ends at lease_until, written and judged by the store's clock (SQLite's
-- 'now' inside the statement), so processes whose clocks disagree still agree on it;
-- due_at stays the time the row is due. leased_by names the attempt holding the row
-- (host:pid/token): the attempt's outcome is recorded only while it still does.
ALTER TABLE outbox ADD COLUMN lease_until TEXT;
