-- Per-attempt log accounting, for the size cap (head + tail kept) and retention.
ALTER TABLE attempts
    ADD COLUMN log_chunks        bigint NOT NULL DEFAULT 0,  -- distinct chunks received
    ADD COLUMN log_bytes         bigint NOT NULL DEFAULT 0,  -- bytes received
    ADD COLUMN log_kept_bytes    bigint NOT NULL DEFAULT 0,  -- bytes stored now
    ADD COLUMN log_head_end      bigint,                     -- last seq of the kept head, once the cap is hit
    ADD COLUMN log_head_bytes    bigint NOT NULL DEFAULT 0,
    ADD COLUMN log_dropped_bytes bigint NOT NULL DEFAULT 0,
    ADD COLUMN logs_purged_at    timestamptz;               -- retention removed its log

CREATE INDEX attempts_unpurged_finished_idx ON attempts (finished_at)
    WHERE logs_purged_at IS NULL AND finished_at IS NOT NULL;
