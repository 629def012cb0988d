-- When each agent was last given a conversation (by a rule, a rotation, the queue or a
-- person): balanced assignment breaks ties between agents as loaded by it, the one
-- longest without first; an agent never given one has no row and comes before all.
CREATE TABLE agent_assigned (
    agent   TEXT PRIMARY KEY,
    last_at TEXT NOT NULL
);
