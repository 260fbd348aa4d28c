DELETE FROM dashboard_sessions WHERE secret_hash = $1
