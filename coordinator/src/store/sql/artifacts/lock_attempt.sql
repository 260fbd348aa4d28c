SELECT state, worker_id FROM attempts WHERE id = $1 FOR SHARE
