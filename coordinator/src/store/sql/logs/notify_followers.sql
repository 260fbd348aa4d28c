SELECT pg_notify($1, job_id::text) FROM attempts WHERE id = $2
