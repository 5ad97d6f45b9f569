-- Who issued each token: separation of duties treats the issuer as the token's principal too.
ALTER TABLE tokens ADD COLUMN issued_by TEXT;
