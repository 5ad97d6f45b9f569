-- When time next acts on each record (a request's time-out, otherwise the expiry), so the
-- expiry job reads what is due instead of every pending request. Requests get theirs from
-- their record when the store opens (the time-out is only in the record).
ALTER TABLE exceptions ADD COLUMN due_at TEXT;
UPDATE exceptions SET due_at = expires_at WHERE state <> 'requested';
CREATE INDEX exceptions_by_due ON exceptions (due_at);
