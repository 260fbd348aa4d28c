DELETE FROM worker_samples WHERE ctid IN (SELECT ctid FROM worker_samples
WHERE at < now() - $1 * interval '1 second' LIMIT $2)
