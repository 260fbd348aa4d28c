DELETE FROM notifications WHERE id IN (SELECT id FROM notifications
WHERE state <> 'pending' AND finished_at < now() - $1 * interval '1 second'
LIMIT 10000)
