-- State notifications (V20) only while someone watches. Each one cost a PL/pgSQL call per
-- row, a queue entry and a message to every coordinator's LISTEN connection: three per
-- job, about a tenth of PostgreSQL's CPU under load, for nobody when no WatchJobs/WaitJob
-- call is open (the common case).
--
-- The gate is a sequence because its value is seen by every session at once and outside
-- transactions, and reading it is a cheap built-in call in the trigger's WHEN (no
-- subquery, no PL/pgSQL call per row). It holds the time (epoch seconds, database clock)
-- until which some coordinator has a watch open; coordinators with watches push it
-- forward, so a crashed one lets it lapse. A coordinator that (re-)arms it waits until
-- every transaction that was running then has ended and has its watchers re-read, so a
-- change whose row was written while the gate was closed is not missed either.
CREATE SEQUENCE drover_watch_gate MINVALUE 0 START 0;
-- Whoever may change jobs (an operator's SQL too) must be able to evaluate the WHEN.
GRANT SELECT ON SEQUENCE drover_watch_gate TO PUBLIC;

DROP TRIGGER jobs_notify_state_insert ON jobs;
DROP TRIGGER jobs_notify_state_update ON jobs;

CREATE TRIGGER jobs_notify_state_insert AFTER INSERT ON jobs
    FOR EACH ROW
    WHEN (pg_sequence_last_value('drover_watch_gate') > extract(epoch FROM statement_timestamp()))
    EXECUTE FUNCTION drover_notify_job_state();

CREATE TRIGGER jobs_notify_state_update AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND pg_sequence_last_value('drover_watch_gate') > extract(epoch FROM statement_timestamp()))
    EXECUTE FUNCTION drover_notify_job_state();
