-- Times are ISO 8601 in UTC with an offset, so text order is time order.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE conversations (
    id              INTEGER PRIMARY KEY,
    inbox           TEXT NOT NULL,
    customer        TEXT,
    subject         TEXT NOT NULL,
    thread_subject  TEXT NOT NULL,
    assignee        TEXT,
    team            TEXT,
    status          TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    created_at      TEXT NOT NULL,
    last_message_at TEXT NOT NULL,
    message_count   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX conversations_thread ON conversations (inbox, customer, thread_subject, last_message_at);
CREATE INDEX conversations_queue ON conversations (status, last_message_at);
CREATE INDEX conversations_assignee ON conversations (assignee, status, last_message_at);
CREATE INDEX conversations_team ON conversations (team, status, last_message_at);

-- state: pending (accepted, not yet through intake), routed, dropped (our own
-- alert come back), shunted (intake failed; error says why; `gateway retry`).
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    inbox           TEXT NOT NULL,
    dedup_key       TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('smtp', 'imap', 'ingest')),
    envelope_from   TEXT,
    envelope_to     TEXT NOT NULL,
    raw             BLOB NOT NULL,
    received_at     TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'routed', 'dropped', 'shunted')),
    error           TEXT,
    conversation_id INTEGER REFERENCES conversations (id),
    message_id      TEXT,
    sender          TEXT,
    subject         TEXT,
    UNIQUE (inbox, dedup_key)
);
CREATE INDEX messages_pending ON messages (id) WHERE state = 'pending';
CREATE INDEX messages_shunted ON messages (id) WHERE state = 'shunted';
CREATE INDEX messages_by_message_id ON messages (inbox, message_id);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

CREATE TABLE tags (
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    tag             TEXT NOT NULL,
    PRIMARY KEY (conversation_id, tag)
);

CREATE TABLE events (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    at              TEXT NOT NULL,
    kind            TEXT NOT NULL,
    actor           TEXT NOT NULL,
    agent           TEXT,
    previous_agent  TEXT,
    rule            TEXT,
    detail          TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_conversation ON events (conversation_id, id);

CREATE TABLE agent_status (
    agent      TEXT PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('available', 'away', 'dnd')),
    changed_at TEXT NOT NULL
);

-- One row per rotation ('round_robin', 'team:<id>'): the agent served last.
CREATE TABLE rotations (
    key        TEXT PRIMARY KEY,
    last_agent TEXT NOT NULL
);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('alert')),
    event_id        INTEGER NOT NULL UNIQUE REFERENCES events (id),
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    payload         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    due_at          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (due_at) WHERE state = 'pending';
