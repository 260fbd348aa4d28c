SELECT a.id, a.state, a.job_id, a.lease_expires_at < now() AS expired,
        extract(epoch FROM now() - a.started_at)::float8 AS ran,
        j.retry_policy, j.failure_count, j.lost_count, j.queue,
        j.cancel_requested_at IS NOT NULL AS cancel_requested, a.log_chunks, a.worker_id
   FROM attempts a JOIN jobs j ON j.id = a.job_id
  WHERE a.id = ANY($1) ORDER BY a.id FOR UPDATE OF a, j
