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
