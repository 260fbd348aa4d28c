SELECT id, idempotency_key, channel, rule, subject, body, state, tries,
       next_attempt_at, last_error, created_at FROM notifications
WHERE (NOT $1 OR state = 'dead') AND ($2::int8 IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3
