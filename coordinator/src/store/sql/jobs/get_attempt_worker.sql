SELECT worker_id FROM attempts WHERE id = $1
