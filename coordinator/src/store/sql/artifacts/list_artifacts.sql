SELECT a.attempt_id, a.job_id, t.number, a.name, a.size, a.sha256, a.created_at FROM artifacts a
 JOIN attempts t ON t.id = a.attempt_id
WHERE a.job_id = $1 AND t.state = 'succeeded' ORDER BY a.name
