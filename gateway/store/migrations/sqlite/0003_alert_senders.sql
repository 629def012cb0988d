-- Alerts caused by each sender in the current hour: a loop with a peer that
-- strips Auto-Submitted, or a flood from one address, alerts at most so often.

CREATE TABLE alert_senders (
    sender       TEXT PRIMARY KEY,
    window_start TEXT NOT NULL,
    alerts       INTEGER NOT NULL
);
