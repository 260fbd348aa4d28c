-- Per-queue flow control set by operators. A queue with no row is active.
CREATE TABLE queue_settings (
    queue      text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    paused_at  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Concurrency keys: a job may carry keys; at most max_running jobs holding a key run at
-- once. `running` is taken in the claim transaction (row lock + check on the latest row
-- version, so it is race-free across coordinators) and given back by the trigger below
-- whenever a keyed job leaves 'running', whatever made it leave.
ALTER TABLE jobs ADD COLUMN concurrency_keys text[] NOT NULL DEFAULT '{}';
CREATE INDEX jobs_pending_keyed_idx ON jobs (queue, not_before, id)
    WHERE state = 'pending' AND concurrency_keys <> '{}';

CREATE TABLE concurrency_keys (
    key         text PRIMARY KEY,
    max_running integer NOT NULL CHECK (max_running >= 1),
    running     integer NOT NULL DEFAULT 0 CHECK (running >= 0),
    -- Rate limit (token bucket), when the key has one: rate_per_sec tokens are added per
    -- second up to burst; a job start takes one. tokens is as of refilled_at.
    rate_per_sec float8 CHECK (rate_per_sec > 0),
    burst        float8,
    tokens       float8 NOT NULL DEFAULT 0,
    refilled_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION drover_release_concurrency_keys() RETURNS trigger AS $$
BEGIN
    UPDATE concurrency_keys SET running = greatest(running - 1, 0), updated_at = now()
     WHERE key = ANY (OLD.concurrency_keys);
    -- Jobs waiting for the key may run now, on any coordinator.
    PERFORM pg_notify('drover_jobs', OLD.queue);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_release_concurrency_keys AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state = 'running' AND NEW.state <> 'running'
                       AND OLD.concurrency_keys <> '{}')
    EXECUTE FUNCTION drover_release_concurrency_keys();

-- Priority of a job (higher first within a queue). The claim's order is unchanged
-- (not_before, id): a job of priority p is submitted with not_before moved p x
-- priority_aging_ms into the past, so it ranks as if it had waited that much longer.
ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;

-- Dependencies: a job submitted with --after waits (not_before far in the future, so the
-- claim never sees it) until every job it depends on succeeded. The trigger below makes
-- it due when the last one succeeds, and cancels it (and, through the same trigger, its
-- own dependants) when one ends permanent_failed or cancelled.
CREATE TABLE job_deps (
    job_id     uuid NOT NULL REFERENCES jobs (id),
    depends_on uuid NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX job_deps_depends_on_idx ON job_deps (depends_on);
-- Set (under the row lock) when a dependant is submitted: the trigger fires only then, so
-- jobs nobody waits for finish exactly as before.
ALTER TABLE jobs ADD COLUMN has_dependants boolean NOT NULL DEFAULT false;

CREATE FUNCTION drover_resolve_deps() RETURNS trigger AS $$
DECLARE
    d record;
BEGIN
    IF NEW.state = 'succeeded' THEN
        FOR d IN
            SELECT j.id, j.queue FROM job_deps x JOIN jobs j ON j.id = x.job_id
             WHERE x.depends_on = NEW.id AND j.state = 'pending'
               AND j.not_before >= '3000-01-01'
               AND NOT EXISTS (SELECT 1 FROM job_deps y JOIN jobs o ON o.id = y.depends_on
                                WHERE y.job_id = j.id AND o.state <> 'succeeded')
        LOOP
            UPDATE jobs SET not_before = now(), reason = '', updated_at = now() WHERE id = d.id;
            PERFORM pg_notify('drover_jobs', d.queue);
        END LOOP;
    ELSE
        FOR d IN
            SELECT j.id FROM job_deps x JOIN jobs j ON j.id = x.job_id
             WHERE x.depends_on = NEW.id AND j.state = 'pending'
        LOOP
            UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(),
                   reason = format('dependency %s ended %s', NEW.id, NEW.state)
             WHERE id = d.id;
            INSERT INTO outbox (job_id, event, payload)
            VALUES (d.id, 'job.cancelled',
                    jsonb_build_object('reason', format('dependency %s ended %s', NEW.id, NEW.state)));
        END LOOP;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_resolve_deps AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.has_dependants AND OLD.state <> NEW.state
                       AND NEW.state IN ('succeeded', 'permanent_failed', 'cancelled'))
    EXECUTE FUNCTION drover_resolve_deps();
