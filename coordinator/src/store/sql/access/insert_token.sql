INSERT INTO api_tokens (id, name, role, queues, worker_pattern, token_hash,
   expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id, name, role, queues, worker_pattern, token_hash, created_at,
       expires_at, last_used_at, revoked_at
