-- The outbox is read from both ends: the oldest due rows (outbox_due) and the
-- newest, so that a fresh alert goes out while a backlog drains.
CREATE INDEX outbox_newest ON outbox (id) WHERE state = 'pending';
