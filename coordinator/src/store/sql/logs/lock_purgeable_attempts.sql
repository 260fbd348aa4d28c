SELECT id FROM attempts
WHERE logs_purged_at IS NULL AND finished_at IS NOT NULL
  AND finished_at < now() - $1 * interval '1 millisecond'
ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED
