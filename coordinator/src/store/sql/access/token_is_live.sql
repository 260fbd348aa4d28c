SELECT 1 FROM api_tokens WHERE id = $1 AND revoked_at IS NULL
AND (expires_at IS NULL OR expires_at > now())
