SELECT id, name, role, queues, worker_pattern, token_hash, created_at,
       expires_at, last_used_at, revoked_at FROM api_tokens WHERE token_hash = $1
