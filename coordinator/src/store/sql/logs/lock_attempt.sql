SELECT state, log_kept_bytes, log_head_end, log_head_bytes, log_dropped_bytes,
     worker_id, log_part, log_chunks
FROM attempts WHERE id = $1 FOR UPDATE
