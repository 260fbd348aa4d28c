-- Stored states are guarded by the database, not only by the code that writes them.
--
-- jobs.state, attempts.state (V1) and notifications.state (V13) already have CHECK
-- constraints. This adds them to the other columns that hold one of a fixed set of values.
-- Each is added NOT VALID and then validated: existing rows are checked without blocking
-- writers for the scan, and a row outside the set fails the migration (naming the
-- constraint) instead of being changed.
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('viewer', 'operator', 'admin', 'worker')) NOT VALID;
ALTER TABLE api_tokens VALIDATE CONSTRAINT api_tokens_role_check;

-- 1 stdout, 2 stderr (drover.v1.LogStream); the gRPC layer refuses anything else.
ALTER TABLE log_chunks ADD CONSTRAINT log_chunks_stream_check
    CHECK (stream IN (1, 2)) NOT VALID;
ALTER TABLE log_chunks VALIDATE CONSTRAINT log_chunks_stream_check;

-- A worker's state (alive, stale, draining, paused, offline) is not stored: it follows
-- from last_seen_at, draining and paused_reason when it is read.
