-- Rows are locked in id order, the order the result group locks them in: locking them in
-- scan order let a renewal and a result group each hold a row the other waited for (a
-- deadlock, found only after deadlock_timeout, one second with both stalled).
WITH l AS (
    SELECT a.id, j.cancel_requested_at IS NOT NULL AS cancel
      FROM attempts a JOIN jobs j ON j.id = a.job_id
     WHERE a.id = ANY($1) AND a.worker_id = $2 AND a.state = 'running'
     ORDER BY a.id
       FOR UPDATE OF a)
UPDATE attempts a SET lease_expires_at = now() + $3 * interval '1 millisecond'
  FROM l
 WHERE a.id = l.id
RETURNING a.id, l.cancel
