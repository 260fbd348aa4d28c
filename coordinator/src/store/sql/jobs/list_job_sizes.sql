SELECT j.id, octet_length(j.argv::text) + octet_length(j.env::text)
        + octet_length(j.params::text) + octet_length(j.labels::text)
        + octet_length(j.outputs::text) + octet_length(j.reason)
        + octet_length(j.retry_policy::text)
        + coalesce(octet_length(j.idempotency_key), 0) AS size
 FROM jobs j
WHERE ($1::text IS NULL OR j.state = $1)
  AND ($2::text IS NULL OR j.queue = $2)
  AND ($3::timestamptz IS NULL OR (j.created_at, j.id) < ($3, $4::uuid))
  AND ($6::text IS NULL OR j.labels @> ARRAY[$6::text])
  AND ($7::jsonb IS NULL OR j.params @> $7)
  AND ($8::timestamptz IS NULL OR j.created_at >= $8)
  AND ($9::timestamptz IS NULL OR j.created_at < $9)
ORDER BY j.created_at DESC, j.id DESC LIMIT $5
