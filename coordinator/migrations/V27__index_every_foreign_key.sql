-- Every foreign key gets an index that starts with its columns: deleting a referenced row
-- makes PostgreSQL look for the rows that point at it, and without an index that is a scan
-- of the whole referencing table per deleted row.
--
-- jobs.current_attempt_id references attempts. Retention deletes attempts by the thousand;
-- each one scanned all of jobs, a batch took 40 s and more with 140 000 jobs, retention fell
-- behind a steady 160 jobs/s and the database grew without bound. Only running jobs have a
-- current attempt, so the index is partial and small.
CREATE INDEX jobs_current_attempt_idx ON jobs (current_attempt_id)
    WHERE current_attempt_id IS NOT NULL;

-- Revoking a token ends its dashboard sessions (ON DELETE CASCADE, and the lookups by token).
CREATE INDEX dashboard_sessions_token_idx ON dashboard_sessions (token_id);
