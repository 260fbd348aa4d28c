UPDATE attempts SET log_chunks = log_chunks + $2, log_bytes = log_bytes + $3,
log_kept_bytes = $4, log_head_end = $5, log_head_bytes = $6,
log_dropped_bytes = $7 WHERE id = $1
