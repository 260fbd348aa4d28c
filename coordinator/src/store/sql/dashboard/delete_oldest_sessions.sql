DELETE FROM dashboard_sessions WHERE secret_hash IN (
SELECT secret_hash FROM dashboard_sessions WHERE token_id = $1
 ORDER BY created_at DESC OFFSET $2)
