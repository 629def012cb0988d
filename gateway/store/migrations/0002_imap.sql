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
