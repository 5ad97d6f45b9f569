-- What a token may be used for (`read`, `request`, `approve`, `decide`, `admin`, comma
-- separated), within its roles; NULL: everything its roles allow. Part of the sealed record.
ALTER TABLE tokens ADD COLUMN scopes TEXT;
