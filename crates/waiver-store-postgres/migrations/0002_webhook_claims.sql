-- Which replica delivers a webhook subscription's messages, and until when (database time).
ALTER TABLE webhooks ADD COLUMN lease_holder TEXT;
ALTER TABLE webhooks ADD COLUMN lease_until TIMESTAMPTZ;
