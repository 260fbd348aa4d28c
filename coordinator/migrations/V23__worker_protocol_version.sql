-- The worker protocol version each worker stated in its Hello (expand-only: coordinators
-- of the previous release do not name the column and get the default).
ALTER TABLE workers ADD COLUMN protocol_version int NOT NULL DEFAULT 1;
