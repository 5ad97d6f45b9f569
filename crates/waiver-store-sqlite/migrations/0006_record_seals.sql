-- Record seals (waiver_store::seal): each event that changed a record carries the record's
-- key and the SHA-256 of its stored text (hashed into the chain with the body; these
-- columns index it and are checked against the body), and each record keeps the sequence
-- number of the event that sealed it. Rows from before are sealed once at the next start.
ALTER TABLE events ADD COLUMN seal_digest TEXT;
ALTER TABLE events ADD COLUMN seal_key TEXT;
CREATE INDEX events_by_seal ON events (seal_key, seq) WHERE seal_key IS NOT NULL;

ALTER TABLE exceptions ADD COLUMN sealed_seq INTEGER;
ALTER TABLE identities ADD COLUMN sealed_seq INTEGER;
ALTER TABLE tokens ADD COLUMN sealed_seq INTEGER;

-- Usage is telemetry every node flushes, not governance state: it moves out of the sealed
-- record into columns.
ALTER TABLE exceptions ADD COLUMN use_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE exceptions ADD COLUMN last_used_at TEXT;
UPDATE exceptions SET
    use_count = coalesce(json_extract(record, '$.usage.count'), 0),
    last_used_at = json_extract(record, '$.usage.last_used_at');
