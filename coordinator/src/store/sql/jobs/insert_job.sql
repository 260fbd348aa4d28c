INSERT INTO jobs AS j (id, queue, state, argv, env, labels, params,
timeout_ms, retry_policy, idempotency_key, original_job_id, retry_of, outputs,
trace_parent, limits, secret_env)
VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING j.id, j.queue, j.state, j.argv, j.env, j.labels, j.params,
       j.timeout_ms, j.retry_policy, j.idempotency_key, j.original_job_id, j.retry_of,
       j.attempt_count, j.current_attempt_id, j.not_before, j.reason, j.created_at,
       j.updated_at, j.finished_at, j.cancel_requested_at, j.outputs, j.limits, j.secret_env,
       j.concurrency_keys, j.priority
