-- The audit log: the truth. `body` is the event's canonical JSON exactly as it was hashed
-- (hash = SHA-256(prev_hash || body)); `seq` and `exception_id` index it.
CREATE TABLE events (
    seq          BIGINT PRIMARY KEY,
    exception_id TEXT,
    body         TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);
CREATE INDEX events_by_exception ON events (exception_id, seq) WHERE exception_id IS NOT NULL;

-- Append-only for the application; the hash chain is what stops a person with the database.
CREATE FUNCTION waiver_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION waiver_events_append_only();

-- The chain head, one row: every writer locks it (FOR UPDATE) for the length of its
-- transaction, so commits from any replica append in one line without gaps.
CREATE TABLE chain_head (
    id             BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    seq            BIGINT NOT NULL,
    hash           TEXT NOT NULL,
    last_exception BIGINT NOT NULL
);

CREATE TABLE exceptions (
    number     BIGINT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    version    BIGINT NOT NULL,
    subject    TEXT NOT NULL,
    owner      TEXT NOT NULL,
    state      TEXT NOT NULL,
    -- Fixed-width UTC with six fractional digits: text order is time order.
    expires_at TEXT NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX exceptions_by_subject ON exceptions (subject);
CREATE INDEX exceptions_by_owner ON exceptions (owner);
CREATE INDEX exceptions_by_expiry ON exceptions (expires_at);

CREATE TABLE identities (
    entity  TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    status  TEXT NOT NULL,
    owner   TEXT NOT NULL,
    record  TEXT NOT NULL
);

-- API tokens: the SHA-256 of the secret, never the secret.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    principal   TEXT NOT NULL,
    roles       TEXT NOT NULL,
    label       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

-- Webhook subscriptions; `delivered_seq` is each one's cursor into the event log.
CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    event_types     TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    deleted_at      TEXT,
    delivered_seq   BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT
);
