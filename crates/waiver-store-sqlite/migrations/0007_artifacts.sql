-- Baselines and rules as artifacts of the log, content-addressed: the text of every version
-- ever put in force, keyed by its SHA-256. The `baseline.set` / `rules.set` event that put
-- one in force seals it (seal_key `baseline` or `rules`, seal_digest its key here), so what
-- was in force at any event is the newest such seal at or before it.
CREATE TABLE artifacts (
    digest TEXT PRIMARY KEY,
    kind   TEXT NOT NULL,
    body   TEXT NOT NULL
) STRICT;
