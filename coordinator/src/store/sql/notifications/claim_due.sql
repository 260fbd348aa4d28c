SELECT id, idempotency_key, channel, rule, subject, body, state, tries,
       next_attempt_at, last_error, created_at FROM notifications
WHERE state = 'pending' AND next_attempt_at <= now()
ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
