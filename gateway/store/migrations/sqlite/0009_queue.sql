-- A conversation that waits because nobody could take it (its rotation or team found
-- no agent available with room) is queued for that rotation ('round_robin' or
-- 'team:ID') since it began to wait; it is handed out, oldest first, as soon as an
-- agent of it can take one. One unassigned by a person is not queued: it waits for a
-- claim. The index makes the oldest of a queue one seek, however long the queue.
ALTER TABLE conversations ADD COLUMN queued_for TEXT;
ALTER TABLE conversations ADD COLUMN queued_at TEXT;
CREATE INDEX conversations_waiting ON conversations (queued_for, queued_at, id)
    WHERE queued_for IS NOT NULL;
