SELECT p.id, p.concurrency_keys FROM (
   SELECT u.name FROM unnest($1::text[]) u(name)
    WHERE NOT EXISTS (SELECT 1 FROM queue_settings qs
                       WHERE qs.queue = u.name AND qs.paused)) q
CROSS JOIN LATERAL (
   SELECT id, concurrency_keys, not_before FROM jobs
    WHERE state = 'pending' AND queue = q.name AND not_before <= now()
      AND labels <@ $2 AND concurrency_keys <> '{}'
    ORDER BY not_before, id LIMIT $3 FOR UPDATE SKIP LOCKED) p
ORDER BY p.not_before, p.id LIMIT $3
