-- Creating a partition of log_chunks locks the parent and, for the foreign key, attempts.
-- Below deadlock_timeout (1 s), so that the DDL gives up before a deadlock check can find
-- it in a cycle: log writes queue behind it, and a heartbeat's lease renewal can wait for
-- a log write's row lock while holding the attempts lock the DDL waits for. With 2 s the
-- soak once had PostgreSQL break such a cycle by failing the log write instead.
SET LOCAL lock_timeout = '200ms'
