SELECT j.id, j.state, j.finished_at, now() FROM jobs j
WHERE j.state = $1 AND j.finished_at IS NOT NULL
  AND j.finished_at < now() - $2 * interval '1 second'
  AND j.current_attempt_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.retry_of = j.id)
  AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.original_job_id = j.id)
  AND NOT EXISTS (SELECT 1 FROM job_deps d WHERE d.depends_on = j.id)
  AND NOT EXISTS (SELECT 1 FROM jobs o
                   WHERE o.id IN (j.retry_of, j.original_job_id)
                     AND o.state IN ('pending', 'running'))
ORDER BY j.finished_at LIMIT $3 FOR UPDATE OF j SKIP LOCKED
