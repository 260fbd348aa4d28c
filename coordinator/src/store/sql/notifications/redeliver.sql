UPDATE notifications SET state = 'pending', tries = 0, next_attempt_at = now(),
      finished_at = NULL
WHERE id = $1 AND state = 'dead' RETURNING id, idempotency_key, channel, rule, subject, body, state, tries,
       next_attempt_at, last_error, created_at
