SELECT j.id, j.queue, j.state, j.argv, j.env, j.labels, j.params,
       j.timeout_ms, j.retry_policy, j.idempotency_key, j.original_job_id, j.retry_of,
       j.attempt_count, j.current_attempt_id, j.not_before, j.reason, j.created_at,
       j.updated_at, j.finished_at, j.cancel_requested_at, j.outputs, j.limits, j.secret_env,
       j.concurrency_keys, j.priority FROM jobs j WHERE j.idempotency_key = ANY($1)
