UPDATE attempts a SET lease_expires_at = now() + $3 * interval '1 millisecond'
  FROM jobs j
 WHERE a.id = ANY($1) AND a.worker_id = $2 AND a.state = 'running'
   AND j.id = a.job_id
RETURNING a.id, j.cancel_requested_at IS NOT NULL
