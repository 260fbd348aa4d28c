SELECT id FROM attempts WHERE state = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at LIMIT $1
