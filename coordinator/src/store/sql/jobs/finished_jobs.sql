SELECT j.id, j.queue, j.state, j.argv, j.env, j.labels, j.params,
       j.timeout_ms, j.retry_policy, j.idempotency_key, j.original_job_id, j.retry_of,
       j.attempt_count, j.current_attempt_id, j.not_before, j.reason, j.created_at,
       j.updated_at, j.finished_at, j.cancel_requested_at, j.outputs, j.limits, j.secret_env,
       j.concurrency_keys, j.priority FROM jobs j
WHERE j.state = $1 AND ($2::text IS NULL OR j.queue = $2)
  AND ($3::float8 IS NULL
       OR j.finished_at >= now() - $3 * interval '1 millisecond')
ORDER BY j.finished_at DESC LIMIT $4
