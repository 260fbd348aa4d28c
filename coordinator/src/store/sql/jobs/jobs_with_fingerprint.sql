SELECT j.id, j.queue, j.state, j.argv, j.env, j.labels, j.params,
       j.timeout_ms, j.retry_policy, j.idempotency_key, j.original_job_id, j.retry_of,
       j.attempt_count, j.current_attempt_id, j.not_before, j.reason, j.created_at,
       j.updated_at, j.finished_at, j.cancel_requested_at, j.outputs, j.limits, j.secret_env,
       j.concurrency_keys, j.priority FROM jobs j
WHERE j.id IN (SELECT a.job_id FROM attempts a WHERE a.fingerprint = $1)
  AND ($2::text IS NULL OR j.queue = $2)
  AND ($3::text IS NULL OR j.state = $3)
  AND (NOT $4 OR NOT EXISTS (SELECT 1 FROM jobs r WHERE r.retry_of = j.id))
  AND ($5::timestamptz IS NULL OR (j.created_at, j.id) < ($5, $6::uuid))
ORDER BY j.created_at DESC, j.id DESC LIMIT $7
