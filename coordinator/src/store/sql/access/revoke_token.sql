UPDATE api_tokens SET revoked_at = now()
 WHERE revoked_at IS NULL AND (id = $1 OR ($1 IS NULL AND name = $2))
RETURNING id, name, role, queues, worker_pattern, token_hash, created_at,
       expires_at, last_used_at, revoked_at
