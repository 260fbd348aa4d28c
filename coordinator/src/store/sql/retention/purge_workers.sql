WITH w AS (DELETE FROM workers w WHERE w.id IN (
    SELECT id FROM workers x WHERE x.last_seen_at < now() - $1 * interval '1 second'
       AND NOT EXISTS (SELECT 1 FROM attempts a
                        WHERE a.worker_id = x.id AND a.state = 'running')
     LIMIT $2) RETURNING w.id),
s AS (DELETE FROM worker_samples s USING w WHERE s.worker_id = w.id)
SELECT 1 FROM w
