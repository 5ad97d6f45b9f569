-- The audit log: the truth. `body` is the event's canonical JSON exactly as it was hashed
-- (hash = SHA-256(prev_hash || body)); `seq` and `exception_id` index it and are checked
-- against the body by `audit verify`.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    exception_id TEXT,
    body         TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
) STRICT;

CREATE INDEX events_by_exception ON events (exception_id, seq) WHERE exception_id IS NOT NULL;

-- The log is append-only for the application. These stop a bug, not an attacker with the
-- file (that is what the hash chain is for).
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Projections of the log, written in the same transaction as their events.
CREATE TABLE exceptions (
    number     INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    version    INTEGER NOT NULL,
    subject    TEXT NOT NULL,
    owner      TEXT NOT NULL,
    state      TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    record     TEXT NOT NULL
) STRICT;

CREATE INDEX exceptions_by_subject ON exceptions (subject);
CREATE INDEX exceptions_by_owner ON exceptions (owner);

CREATE TABLE identities (
    entity  TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    status  TEXT NOT NULL,
    owner   TEXT NOT NULL,
    record  TEXT NOT NULL
) STRICT;

-- API tokens: the SHA-256 of the secret, never the secret.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    principal   TEXT NOT NULL,
    roles       TEXT NOT NULL,
    label       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
) STRICT;
