-- When a token last authenticated (telemetry like usage counts: flushed by each node, never
-- sealed, never part of the record's text).
ALTER TABLE tokens ADD COLUMN last_used_at TEXT;
