-- Worker resource health and per-attempt resource use.
ALTER TABLE workers
    ADD COLUMN resources     bytea,                  -- latest drover.v1.HostResources
    ADD COLUMN paused_reason text NOT NULL DEFAULT '',
    ADD COLUMN draining      boolean NOT NULL DEFAULT false;

-- One sample a minute per worker, kept for a day.
CREATE TABLE worker_samples (
    worker_id text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    resources bytea NOT NULL,
    PRIMARY KEY (worker_id, at)
);

ALTER TABLE attempts
    ADD COLUMN peak_rss_bytes bigint,
    ADD COLUMN cpu_time_ms    bigint;
