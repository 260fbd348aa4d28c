SELECT o.id, o.event, o.job_id::text, o.payload, j.queue, j.labels, j.attempt_count,
      extract(epoch FROM a.finished_at - a.started_at)::float8
 FROM outbox o JOIN jobs j ON j.id = o.job_id
 LEFT JOIN attempts a ON a.id = (o.payload->>'attempt_id')::uuid
ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED
