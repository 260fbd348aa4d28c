DELETE FROM artifacts a USING attempts t WHERE a.attempt_id = ANY($1)
AND t.id = a.attempt_id RETURNING a.attempt_id, a.job_id, t.number, a.name, a.size, a.sha256, a.created_at
