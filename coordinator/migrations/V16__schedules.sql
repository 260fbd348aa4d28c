-- Schedules: a job spec fired at each tick of a cron expression in a time zone.

CREATE TABLE schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    timezone      text NOT NULL,
    -- The job spec (argv, env, queue, labels, params, timeout_ms, outputs) and its
    -- fully resolved retry policy, as submitted.
    spec          jsonb NOT NULL,
    retry_policy  jsonb NOT NULL,
    catch_up      text NOT NULL CHECK (catch_up IN ('skip', 'once', 'all')),
    overlap       text NOT NULL CHECK (overlap IN ('allow', 'skip', 'queue')),
    paused        boolean NOT NULL DEFAULT false,
    -- The first tick not yet handled; NULL when the expression has no further tick.
    next_fire_at  timestamptz,
    -- Due ticks the catch-up policy dropped, in total.
    dropped_ticks bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due_idx ON schedules (next_fire_at) WHERE NOT paused;

-- One row per tick handled. The primary key is what makes a tick fire exactly once, however
-- many coordinators schedule at the same time: the row and the job it created are written
-- in one transaction.
CREATE TABLE schedule_runs (
    schedule   text NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    fire_time  timestamptz NOT NULL,
    -- fired: job_id set; held: waiting for the previous run (overlap queue);
    -- skipped: the previous run was unfinished (overlap skip).
    status     text NOT NULL CHECK (status IN ('fired', 'held', 'skipped')),
    manual     boolean NOT NULL DEFAULT false,
    job_id     uuid REFERENCES jobs (id),
    reason     text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, fire_time)
);
CREATE INDEX schedule_runs_held_idx ON schedule_runs (schedule, fire_time) WHERE status = 'held';
CREATE INDEX schedule_runs_job_idx ON schedule_runs (job_id) WHERE job_id IS NOT NULL;
