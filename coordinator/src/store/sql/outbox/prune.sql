DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE id < coalesce(
  (SELECT id FROM outbox WHERE created_at >= now() - $1 * interval '1 second'
    ORDER BY id LIMIT 1), 9223372036854775807)
ORDER BY id LIMIT 10000)
