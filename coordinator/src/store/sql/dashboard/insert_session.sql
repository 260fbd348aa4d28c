INSERT INTO dashboard_sessions (secret_hash, token_id, csrf, expires_at)
VALUES ($1, $2, $3, $4)
