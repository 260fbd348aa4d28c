-- Drover schema, version 1. See docs/architecture.md for the model.

CREATE TABLE jobs (
    id                 uuid PRIMARY KEY,
    queue              text NOT NULL,
    state              text NOT NULL CHECK (state IN
                         ('pending', 'running', 'succeeded', 'permanent_failed', 'cancelled')),
    argv               text[] NOT NULL,         -- template; {name} placeholders filled from params
    env                jsonb NOT NULL DEFAULT '{}',
    labels             text[] NOT NULL DEFAULT '{}',
    params             jsonb NOT NULL DEFAULT '{}',
    timeout_ms         bigint NOT NULL DEFAULT 0,
    retry_policy       jsonb NOT NULL,          -- fully resolved at submit
    idempotency_key    text UNIQUE,
    original_job_id    uuid REFERENCES jobs (id),
    retry_of           uuid REFERENCES jobs (id),
    attempt_count      integer NOT NULL DEFAULT 0,  -- attempts started, for numbering
    failure_count      integer NOT NULL DEFAULT 0,  -- attempts that used up a retry
    lost_count         integer NOT NULL DEFAULT 0,
    current_attempt_id uuid,                    -- set only while running
    not_before         timestamptz NOT NULL DEFAULT now(),
    reason             text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);

-- Leasing scans only pending rows, so it stays cheap however many finished jobs accumulate.
CREATE INDEX jobs_pending_idx ON jobs (queue, not_before, id) WHERE state = 'pending';
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_state_created_idx ON jobs (state, created_at DESC, id DESC);

CREATE TABLE attempts (
    id               uuid PRIMARY KEY,          -- also the lease (fencing) token
    job_id           uuid NOT NULL REFERENCES jobs (id),
    number           integer NOT NULL,
    worker_id        text NOT NULL,
    state            text NOT NULL CHECK (state IN
                       ('running', 'succeeded', 'failed', 'failed_permanent', 'timed_out',
                        'lost', 'cancelled', 'released')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL,
    finished_at      timestamptz,
    exit_code        integer,
    signal           integer,
    reason           text NOT NULL DEFAULT '',
    UNIQUE (job_id, number)
);

-- Invariant: at most one attempt of a job is current.
CREATE UNIQUE INDEX attempts_one_running_per_job ON attempts (job_id) WHERE state = 'running';
CREATE INDEX attempts_running_lease_idx ON attempts (lease_expires_at) WHERE state = 'running';
CREATE INDEX attempts_running_worker_idx ON attempts (worker_id) WHERE state = 'running';

ALTER TABLE jobs ADD CONSTRAINT jobs_current_attempt_fk
    FOREIGN KEY (current_attempt_id) REFERENCES attempts (id);

CREATE TABLE workers (
    id             text PRIMARY KEY,
    hostname       text NOT NULL,
    labels         text[] NOT NULL DEFAULT '{}',
    queues         text[] NOT NULL DEFAULT '{}',
    slots          integer NOT NULL,
    version        text NOT NULL DEFAULT '',
    coordinator_id text NOT NULL DEFAULT '',
    connected      boolean NOT NULL DEFAULT false,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE log_chunks (
    attempt_id uuid NOT NULL REFERENCES attempts (id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    stream     smallint NOT NULL,               -- 1 stdout, 2 stderr
    time       timestamptz NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (attempt_id, seq)               -- a re-sent chunk is stored once
);

-- Events written in the same transaction as the state change that caused them;
-- delivered to people by a dispatcher that can fall behind without losing any.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL,
    event        text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX outbox_undelivered_idx ON outbox (id) WHERE delivered_at IS NULL;
