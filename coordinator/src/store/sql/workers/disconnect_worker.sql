UPDATE workers SET last_seen_at = now()
WHERE id = $1 AND coordinator_id = $2
