SELECT a.id, a.job_id, a.number, a.worker_id, a.state, a.started_at,
       a.lease_expires_at, a.finished_at, a.exit_code, a.signal, a.reason, a.log_bytes,
       a.log_dropped_bytes, a.logs_purged_at, a.peak_rss_bytes, a.cpu_time_ms FROM attempts a WHERE a.job_id = $1 ORDER BY a.number
