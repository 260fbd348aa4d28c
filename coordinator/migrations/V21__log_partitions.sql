-- Logs partitioned by time, so retention drops whole tables instead of deleting rows (which
-- leaves bloat for VACUUM). The partition key is the attempt's `log_part` (the time it
-- started), copied onto each chunk: all chunks of an attempt are in one partition, so a
-- re-sent chunk is still found by the primary key (attempt_id, seq, log_part).
--
-- Existing logs are not copied: the old table becomes the partition of everything before
-- 1970 (its chunks and attempts read log_part '-infinity', a default that rewrites
-- nothing). The leader drops it like any other once every attempt in it is past retention.
-- Coordinators create the time partitions (see docs/architecture.md, Retention).

ALTER TABLE attempts ADD COLUMN log_part timestamptz NOT NULL DEFAULT '-infinity';
-- New attempts: their start (the claim transaction's time).
ALTER TABLE attempts ALTER COLUMN log_part SET DEFAULT now();
-- Retention looks up the attempts of a partition's range that still have a log.
CREATE INDEX attempts_log_part_idx ON attempts (log_part) WHERE logs_purged_at IS NULL;

ALTER TABLE log_chunks RENAME TO log_chunks_legacy;
ALTER TABLE log_chunks_legacy RENAME CONSTRAINT log_chunks_pkey TO log_chunks_legacy_pkey;
ALTER TABLE log_chunks_legacy RENAME CONSTRAINT log_chunks_attempt_id_fkey
    TO log_chunks_legacy_attempt_id_fkey;
ALTER TABLE log_chunks_legacy ADD COLUMN log_part timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE log_chunks_legacy DROP CONSTRAINT log_chunks_legacy_pkey;
ALTER TABLE log_chunks_legacy ADD PRIMARY KEY (attempt_id, seq, log_part);

CREATE TABLE log_chunks (
    attempt_id uuid NOT NULL REFERENCES attempts (id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    stream     smallint NOT NULL,               -- 1 stdout, 2 stderr
    time       timestamptz NOT NULL,
    data       bytea NOT NULL,
    log_part   timestamptz NOT NULL,            -- = attempts.log_part
    PRIMARY KEY (attempt_id, seq, log_part)     -- a re-sent chunk is stored once
) PARTITION BY RANGE (log_part);

-- As V7: lz4 for the chunks, inherited by every partition created later.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE log_chunks ALTER COLUMN data SET COMPRESSION lz4';
EXCEPTION WHEN OTHERS THEN
    EXECUTE 'ALTER TABLE log_chunks ALTER COLUMN data SET STORAGE EXTERNAL';
END
$$;

ALTER TABLE log_chunks ATTACH PARTITION log_chunks_legacy
    FOR VALUES FROM (MINVALUE) TO ('1970-01-01 00:00:00+00');
