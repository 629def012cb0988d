-- Connected mailboxes: where each poller stands, and where each stored message
-- sits in a mailbox (so its keywords can follow the conversation).

CREATE TABLE imap_cursors (
    inbox              TEXT NOT NULL,
    folder             TEXT NOT NULL,
    uidvalidity        INTEGER NOT NULL,
    last_uid           INTEGER NOT NULL,
    first_connected_at TEXT NOT NULL,
    PRIMARY KEY (inbox, folder)
);

-- A copy deduplicated against SMTP is listed too: it carries keywords all the same.
CREATE TABLE imap_sources (
    inbox       TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    dedup_key   TEXT NOT NULL,
    PRIMARY KEY (inbox, folder, uidvalidity, uid)
);
CREATE INDEX imap_sources_by_key ON imap_sources (inbox, dedup_key);

-- The outbox also carries IMAP keyword updates ("keywords": make every IMAP copy
-- of a conversation carry its current assignment), one per conversation change.
CREATE TABLE outbox_new (
    id              INTEGER PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('alert', 'keywords')),
    event_id        INTEGER NOT NULL REFERENCES events (id),
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    payload         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    due_at          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    last_error      TEXT,
    UNIQUE (kind, event_id)
);
INSERT INTO outbox_new SELECT * FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (due_at) WHERE state = 'pending';
