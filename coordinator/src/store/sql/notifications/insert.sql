INSERT INTO notifications (idempotency_key, channel, rule, subject, body)
VALUES ($1, $2, $3, $4, $5) RETURNING id, idempotency_key, channel, rule, subject, body, state, tries,
       next_attempt_at, last_error, created_at
