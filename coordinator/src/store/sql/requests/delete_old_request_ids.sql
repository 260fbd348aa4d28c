DELETE FROM request_ids WHERE ctid IN (
SELECT ctid FROM request_ids
WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)
