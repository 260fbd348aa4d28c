WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::text[],
                         $6::int8[], $7::int8[], $8::text[], $9::uuid[], $10::text[],
                         $11::int4[], $12::int4[], $13::float8[], $14::bool[], $15::text[],
                         $16::jsonb[])
        AS u(attempt_id, attempt_state, exit_code, signal, reason, peak_rss, cpu_ms,
             fingerprint, job_id, job_state, failures, lost, retry_in_ms, terminal, event,
             payload)
  ), a AS (
    UPDATE attempts SET state = u.attempt_state, finished_at = now(), exit_code = u.exit_code,
           signal = u.signal, reason = u.reason, peak_rss_bytes = u.peak_rss,
           cpu_time_ms = u.cpu_ms, fingerprint = coalesce(u.fingerprint, attempts.fingerprint)
      FROM u WHERE attempts.id = u.attempt_id
  ), j AS (
    UPDATE jobs SET state = u.job_state, current_attempt_id = NULL, failure_count = u.failures,
           lost_count = u.lost, reason = u.reason, updated_at = now(),
           not_before = CASE WHEN u.retry_in_ms IS NULL THEN jobs.not_before
                             ELSE now() + u.retry_in_ms * interval '1 millisecond' END,
           finished_at = CASE WHEN u.terminal THEN now() END
      FROM u WHERE jobs.id = u.job_id
  ), o AS (
    INSERT INTO outbox (job_id, event, payload) SELECT u.job_id, u.event, u.payload FROM u
     WHERE pg_sequence_last_value('drover_outbox_gate') > extract(epoch FROM statement_timestamp())
  )
  -- Log followers' notifications (channel drover_logs) only while the logs gate is
  -- armed (V33); the dispatchers' (drover_jobs) always.
  SELECT count(pg_notify(n.channel, n.payload))
    FROM unnest($17::text[], $18::text[]) AS n(channel, payload)
   WHERE n.channel <> 'drover_logs'
      OR pg_sequence_last_value('drover_logs_gate') > extract(epoch FROM statement_timestamp())
