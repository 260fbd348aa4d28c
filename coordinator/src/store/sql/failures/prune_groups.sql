DELETE FROM failure_groups WHERE last_seen_at < now() - $1 * interval '1 second'
