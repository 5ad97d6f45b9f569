-- A token's expiry (RFC 3339; NULL only for tokens issued before tokens expired). Part of
-- the sealed record: checked at every use, never by a background job.
ALTER TABLE tokens ADD COLUMN expires_at TEXT;
