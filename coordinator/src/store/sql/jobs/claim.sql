WITH room AS MATERIALIZED (
   SELECT greatest(0, $6 - count(*)) AS n FROM attempts r
    WHERE r.worker_id = $4 AND r.state = 'running'),
c AS MATERIALIZED (
   SELECT p.id, p.due FROM (
       SELECT u.name FROM unnest($1::text[]) u(name)
        WHERE NOT EXISTS (SELECT 1 FROM queue_settings qs
                           WHERE qs.queue = u.name AND qs.paused)) q
   CROSS JOIN LATERAL (
       SELECT id, not_before AS due FROM jobs
        WHERE state = 'pending' AND queue = q.name AND not_before <= now()
          AND labels <@ $2 AND concurrency_keys = '{}'
        ORDER BY not_before, id LIMIT least($3, (SELECT n FROM room))
          FOR UPDATE SKIP LOCKED) p
    ORDER BY p.due, p.id
    LIMIT least($3, (SELECT n FROM room))),
a AS (
   INSERT INTO attempts (id, job_id, number, worker_id, state, lease_expires_at,
                         started_at)
   SELECT gen_random_uuid(), j.id, j.attempt_count + 1, $4, 'running',
          now() + $5 * interval '1 millisecond',
          clock_timestamp()
     FROM jobs j JOIN c ON c.id = j.id
   RETURNING id, job_id, number),
u AS (
   UPDATE jobs j SET state = 'running', current_attempt_id = a.id,
          attempt_count = a.number, reason = '', updated_at = now()
     FROM a JOIN c ON c.id = a.job_id WHERE j.id = a.job_id
   RETURNING a.id AS attempt_id, j.id AS job_id, a.number, j.argv, j.env,
             j.params, j.timeout_ms, j.outputs, j.trace_parent, j.limits, j.secret_env,
             extract(epoch FROM now() - c.due)::float8 AS waited)
-- Always one row at least: `room` (free slots by the running count) says whether fewer
-- jobs than asked for means no due job or no room yet.
SELECT room.n AS room, u.* FROM room LEFT JOIN u ON true
