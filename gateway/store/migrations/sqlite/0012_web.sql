-- The web inbox (DESIGN §13). An agent's password, as `gateway set-password` hashed it.
CREATE TABLE web_passwords (
    agent  TEXT PRIMARY KEY,
    hash   TEXT NOT NULL,
    set_at TEXT NOT NULL
);

-- A signed-in browser: the SHA-256 of its cookie (a stolen copy of the store signs
-- nobody in), whose it is, the CSRF token its forms carry, and when it ends.
CREATE TABLE web_sessions (
    id         TEXT PRIMARY KEY,
    agent      TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX web_sessions_agent ON web_sessions (agent);

