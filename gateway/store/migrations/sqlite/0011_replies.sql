-- Agents' mail (DESIGN §12). SQLite cannot change a CHECK in place: both tables are
-- made again (foreign keys are off while migrations run, and checked after them).
--
-- messages: source 'agent' is an answer an agent sent the customer, stored as a message
-- of its conversation (its raw mail is exactly what was sent). The agent's own mail to
-- the replies address ends 'applied' (its commands and answer were carried out) or
-- 'refused' (nothing was: error says why), or 'dropped' (automatic mail).
CREATE TABLE messages_new (
    id              INTEGER PRIMARY KEY,
    inbox           TEXT NOT NULL,
    dedup_key       TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('smtp', 'imap', 'ingest', 'agent')),
    envelope_from   TEXT,
    envelope_to     TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'routed', 'dropped', 'shunted', 'applied',
                                     'refused')),
    error           TEXT,
    conversation_id INTEGER REFERENCES conversations (id),
    message_id      TEXT,
    sender          TEXT,
    subject         TEXT,
    size            INTEGER NOT NULL DEFAULT 0,
    full_size       INTEGER,
    UNIQUE (inbox, dedup_key)
);
INSERT INTO messages_new SELECT id, inbox, dedup_key, source, envelope_from, envelope_to,
    received_at, state, error, conversation_id, message_id, sender, subject, size, full_size
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE INDEX messages_pending ON messages (id) WHERE state = 'pending';
CREATE INDEX messages_shunted ON messages (id) WHERE state = 'shunted';
CREATE INDEX messages_by_message_id ON messages (inbox, message_id);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

-- outbox: 'answer' sends an agent's answer (a stored message) to the customer; 'notice'
-- tells an agent why their mail was refused. A notice about mail whose token named no
-- conversation has neither an event nor a conversation.
CREATE TABLE outbox_new (
    id              INTEGER PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('alert', 'keywords', 'answer', 'notice')),
    event_id        INTEGER REFERENCES events (id),
    conversation_id INTEGER REFERENCES conversations (id),
    payload         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    due_at          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    last_error      TEXT,
    leased_by       TEXT,
    lease_until     TEXT,
    UNIQUE (kind, event_id)
);
INSERT INTO outbox_new SELECT id, kind, event_id, conversation_id, payload, created_at, due_at,
    attempts, state, last_error, leased_by, lease_until FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (due_at) WHERE state = 'pending';
CREATE INDEX outbox_newest ON outbox (id) WHERE state = 'pending';
