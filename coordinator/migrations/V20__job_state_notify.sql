-- Every job's creation and state change is announced on drover_job_states
-- ('<id> <state> <queue>'), whoever makes it: coordinators, the dependency trigger, an
-- operator's SQL. Coordinators fan it out to WatchJobs and WaitJob callers, so waiting for
-- a job costs no polling. NOTIFY is sent at commit, so a watcher never sees a change that
-- was rolled back.
CREATE FUNCTION drover_notify_job_state() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('drover_job_states', NEW.id::text || ' ' || NEW.state || ' ' || NEW.queue);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_notify_state_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION drover_notify_job_state();

CREATE TRIGGER jobs_notify_state_update AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION drover_notify_job_state();
