-- Open exceptions by expiry, for the scheduler's "what has time ended?" query.
CREATE INDEX exceptions_open_by_expiry ON exceptions (expires_at)
    WHERE state IN ('requested', 'approved', 'active', 'suspended');

-- Webhook subscriptions. The event log is the outbox; `delivered_seq` is each
-- subscription's cursor into it, advanced only after the receiver acknowledged.
CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    event_types     TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    deleted_at      TEXT,
    delivered_seq   INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT
) STRICT;
