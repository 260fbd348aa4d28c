INSERT INTO artifacts (attempt_id, job_id, name, size, sha256)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (attempt_id, name) DO UPDATE SET size = $4, sha256 = $5,
   created_at = now()
