-- Files jobs produce: declared as output globs, uploaded by the worker after success.
ALTER TABLE jobs ADD COLUMN outputs text[] NOT NULL DEFAULT '{}';

CREATE TABLE artifacts (
    attempt_id uuid NOT NULL REFERENCES attempts (id),
    job_id     uuid NOT NULL REFERENCES jobs (id),
    name       text NOT NULL,          -- path relative to the work directory
    size       bigint NOT NULL,
    sha256     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (attempt_id, name)
);
CREATE INDEX artifacts_job_idx ON artifacts (job_id);
