WITH u AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[],
         $5::jsonb[], $6::jsonb[], $7::int8[], $8::jsonb[], $9::text[],
         $10::jsonb[], $11::jsonb[], $12::jsonb[], $13::jsonb[],
         $14::int4[], $15::float8[], $16::int4[], $17::text[])
    AS u(id, queue, argv, env, labels, params, timeout_ms, policy, ikey,
         outputs, limits, secret_env, ckeys, priority, shift_ms, ord, trace_parent)),
ins AS (
  INSERT INTO jobs AS j (id, queue, state, argv, env, labels, params,
         timeout_ms, retry_policy, idempotency_key, outputs, trace_parent,
         limits, secret_env, concurrency_keys, priority, not_before)
  SELECT id, queue, 'pending',
         ARRAY(SELECT e FROM jsonb_array_elements_text(argv)
               WITH ORDINALITY t(e, n) ORDER BY n),
         env,
         ARRAY(SELECT jsonb_array_elements_text(labels)),
         params, timeout_ms, policy, ikey,
         ARRAY(SELECT jsonb_array_elements_text(outputs)),
         trace_parent, limits, secret_env,
         ARRAY(SELECT jsonb_array_elements_text(ckeys)),
         priority, now() - shift_ms * interval '1 millisecond'
    FROM u ORDER BY ord
  ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING j.id, j.queue, j.state, j.argv, j.env, j.labels, j.params,
       j.timeout_ms, j.retry_policy, j.idempotency_key, j.original_job_id, j.retry_of,
       j.attempt_count, j.current_attempt_id, j.not_before, j.reason, j.created_at,
       j.updated_at, j.finished_at, j.cancel_requested_at, j.outputs, j.limits, j.secret_env,
       j.concurrency_keys, j.priority),
ob AS (
  INSERT INTO outbox (job_id, event, payload)
  SELECT id, 'job.submitted',
         jsonb_build_object('queue', queue, 'retry_of', NULL) FROM ins
   WHERE pg_sequence_last_value('drover_outbox_gate') > extract(epoch FROM statement_timestamp()))
SELECT * FROM ins
