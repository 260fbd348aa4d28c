-- Log notifications (a job's log grew, an attempt ended) only while someone follows a log
-- or has a dashboard page open, as V31 did for state notifications. The result group sent
-- one per finished job: a signal to every coordinator's LISTEN connection and a message to
-- each, for nobody in the common case (5.9 % of PostgreSQL's CPU per job, BENCHMARKS.md
-- session 12). Coordinators with followers keep the gate armed; after arming one that may
-- have lapsed, they wait for older transactions to end and have their followers re-read.
CREATE SEQUENCE drover_logs_gate MINVALUE 0 START 0;
GRANT SELECT ON SEQUENCE drover_logs_gate TO PUBLIC;
