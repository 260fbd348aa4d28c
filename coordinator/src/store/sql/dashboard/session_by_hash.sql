SELECT t.id, t.name, t.role, t.queues, t.worker_pattern, t.token_hash, t.created_at,
       t.expires_at, t.last_used_at, t.revoked_at, s.csrf, s.expires_at AS session_expires_at
 FROM dashboard_sessions s JOIN api_tokens t ON t.id = s.token_id
WHERE s.secret_hash = $1
