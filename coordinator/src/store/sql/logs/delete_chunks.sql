DELETE FROM log_chunks WHERE attempt_id = ANY($1)
