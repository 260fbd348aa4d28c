-- Outbox rows only while an event rule wants them. The outbox is the alert evaluator's
-- input, and without an event rule nothing read it: each job still wrote two rows (submitted,
-- finished), each with two index entries and a foreign-key check, that retention deleted a
-- week later.
--
-- Like drover_watch_gate (V31): a sequence holding the time (epoch seconds, database
-- clock) until which rows are wanted. Every coordinator whose config has an event rule
-- pushes it forward, the first time before it serves anything, so a lapse of its renewals
-- (all such coordinators gone for ten minutes) is the only time events are not recorded.
CREATE SEQUENCE drover_outbox_gate MINVALUE 0 START 0;
GRANT SELECT ON SEQUENCE drover_outbox_gate TO PUBLIC;
