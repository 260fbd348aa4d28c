SELECT job_id, number, state, worker_id FROM attempts WHERE id = $1
