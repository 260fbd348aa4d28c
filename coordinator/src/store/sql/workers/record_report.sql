WITH w AS (UPDATE workers SET last_seen_at = now(), resources = $2,
                  paused_reason = $3, draining = $4 WHERE id = $1)
INSERT INTO worker_samples (worker_id, resources)
SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM worker_samples
   WHERE worker_id = $1 AND at > now() - interval '60 seconds')
