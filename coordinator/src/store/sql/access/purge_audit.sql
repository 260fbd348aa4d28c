DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log
WHERE at < now() - $1 * interval '1 second' ORDER BY id LIMIT $2)
