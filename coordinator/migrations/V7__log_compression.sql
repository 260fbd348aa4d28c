-- Log chunks arrive at hundreds of MB/s. PostgreSQL's default TOAST compression (pglz)
-- took 43 % of all CPU in the log benchmark, on the one backend storing the job's log,
-- and capped the rate near 34 MB/s. lz4 compresses several times faster. A server built
-- without lz4 (or older than 14) stores new chunks uncompressed instead of paying pglz.
-- EXECUTE defers parsing to run time, so the fallback also covers a syntax error.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE log_chunks ALTER COLUMN data SET COMPRESSION lz4';
EXCEPTION WHEN OTHERS THEN
    EXECUTE 'ALTER TABLE log_chunks ALTER COLUMN data SET STORAGE EXTERNAL';
END
$$;
