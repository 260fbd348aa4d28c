DELETE FROM attempts WHERE job_id = ANY($1)
