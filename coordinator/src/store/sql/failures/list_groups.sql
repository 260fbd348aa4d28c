SELECT queue, fingerprint, normalised, sample, first_seen_at, last_seen_at, count,
      last_job_id, last_attempt_id, exit_codes
 FROM failure_groups
WHERE ($1::text IS NULL OR queue = $1)
  AND ($2::text IS NULL OR fingerprint = $2)
  AND ($3::float8 IS NULL OR last_seen_at >= now() - $3 * interval '1 second')
ORDER BY count DESC, last_seen_at DESC, queue, fingerprint
OFFSET $4 LIMIT $5
