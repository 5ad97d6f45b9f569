-- Which parts of its scope an exception granted (a bitmap over the scope, see
-- waiver_core::exception::Usage::scope_used). Telemetry like use_count: OR-ed in place by
-- each node's usage flush, never sealed.
ALTER TABLE exceptions ADD COLUMN used_scope INTEGER NOT NULL DEFAULT 0;
