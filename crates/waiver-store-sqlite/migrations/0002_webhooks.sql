-- `expires_at` is stored fixed-width (six fractional digits, `Z`) so that text order is time
-- order; rows written before used jiff's shortest form. Pad (or cut to microseconds) them.
UPDATE exceptions SET expires_at = CASE
    WHEN length(expires_at) = 20 THEN substr(expires_at, 1, 19) || '.000000Z'
    WHEN length(expires_at) < 27 THEN substr(expires_at, 1, length(expires_at) - 1)
                                      || substr('000000', 1, 27 - length(expires_at)) || 'Z'
    ELSE substr(expires_at, 1, 26) || 'Z'
END;

-- Exceptions by expiry, for the scheduler's "what has time ended?" range scan.
CREATE INDEX exceptions_by_expiry ON exceptions (expires_at);

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
