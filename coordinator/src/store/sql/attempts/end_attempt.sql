UPDATE attempts SET state = $2, finished_at = now(), exit_code = $3, signal = $4,
reason = $5, peak_rss_bytes = $6, cpu_time_ms = $7 WHERE id = $1
