-- Failure fingerprints (docs/notifications.md): a failing attempt with output gets the
-- fingerprint of its normalised reason and output tail; failures are grouped per queue.
ALTER TABLE attempts ADD COLUMN fingerprint text;
CREATE INDEX attempts_fingerprint_idx ON attempts (fingerprint, job_id) WHERE fingerprint IS NOT NULL;
CREATE INDEX attempts_failed_recent_idx ON attempts (finished_at) WHERE fingerprint IS NOT NULL;

CREATE TABLE failure_groups (
    queue           text NOT NULL,
    fingerprint     text NOT NULL,
    normalised      text NOT NULL,          -- reason + output tail with placeholders
    sample          text NOT NULL,          -- the line that names the cause
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    count           bigint NOT NULL DEFAULT 1,
    last_job_id     uuid NOT NULL,
    last_attempt_id uuid NOT NULL,
    exit_codes      integer[] NOT NULL DEFAULT '{}',   -- distinct, at most 16 kept
    PRIMARY KEY (queue, fingerprint)
);
CREATE INDEX failure_groups_last_seen_idx ON failure_groups (last_seen_at DESC);
