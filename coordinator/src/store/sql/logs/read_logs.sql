SELECT seq, stream, time, data FROM log_chunks
WHERE attempt_id = $1 AND seq > $2
  AND log_part = (SELECT log_part FROM attempts WHERE id = $1)
ORDER BY seq LIMIT $3
