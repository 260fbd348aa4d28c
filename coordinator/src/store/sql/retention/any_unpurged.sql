SELECT EXISTS (SELECT 1 FROM attempts
WHERE ($1::timestamptz IS NULL OR log_part >= $1) AND log_part < $2
  AND logs_purged_at IS NULL)
