-- Manual retry chains and cancellation of running jobs.
ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz;
CREATE INDEX jobs_retry_of_idx ON jobs (retry_of) WHERE retry_of IS NOT NULL;
CREATE INDEX jobs_original_idx ON jobs (original_job_id) WHERE original_job_id IS NOT NULL;
CREATE INDEX jobs_finished_idx ON jobs (state, finished_at DESC) WHERE finished_at IS NOT NULL;
