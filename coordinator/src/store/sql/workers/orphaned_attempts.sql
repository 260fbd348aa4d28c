SELECT id FROM attempts WHERE worker_id = $1 AND state = 'running'
AND NOT (id = ANY($2))
