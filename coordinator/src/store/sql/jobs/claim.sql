-- Leases due jobs without concurrency keys to several workers that take the same queues
-- and labels, in one statement: $3 worker ids, $4 how many each asks for, $5 its slots,
-- $7 how many it may hold beyond them (lease_ahead). Each worker's room is its ask, capped
-- by its slots plus lease_ahead minus the attempts the database still counts as running
-- on it; `free` is the part of it that would start at once (slots not running).
WITH w AS MATERIALIZED (
   SELECT u.worker_id, u.ord,
          greatest(0, least(u.want, u.slots + u.ahead - r.n)) AS n,
          greatest(0, u.slots - r.n) AS free
     FROM unnest($3::text[], $4::int8[], $5::int8[], $7::int8[]) WITH ORDINALITY
          AS u(worker_id, want, slots, ahead, ord)
     CROSS JOIN LATERAL (SELECT count(*) AS n FROM attempts r
                          WHERE r.worker_id = u.worker_id AND r.state = 'running') r),
total AS MATERIALIZED (SELECT coalesce(sum(n), 0)::int8 AS n FROM w),
-- One row per unit of room, the workers taking turns, so fewer due jobs than room are
-- shared out evenly; free slots first, so no job is held ahead on a busy worker while
-- another worker's slot stands free.
seats AS MATERIALIZED (
   SELECT w.worker_id, row_number() OVER (ORDER BY s.i > w.free, s.i, w.ord) AS seat
     FROM w CROSS JOIN LATERAL generate_series(1, w.n) AS s(i)),
c AS MATERIALIZED (
   SELECT p.id, p.due, row_number() OVER (ORDER BY p.due, p.id) AS seat FROM (
       SELECT q.name FROM unnest($1::text[]) q(name)
        WHERE NOT EXISTS (SELECT 1 FROM queue_settings qs
                           WHERE qs.queue = q.name AND qs.paused)) q
   CROSS JOIN LATERAL (
       SELECT id, not_before AS due FROM jobs
        WHERE state = 'pending' AND queue = q.name AND not_before <= now()
          AND labels <@ $2 AND concurrency_keys = '{}'
        ORDER BY not_before, id LIMIT (SELECT n FROM total)
          FOR UPDATE SKIP LOCKED) p
    ORDER BY p.due, p.id
    LIMIT (SELECT n FROM total)),
a AS (
   INSERT INTO attempts (id, job_id, number, worker_id, state, lease_expires_at,
                         started_at)
   SELECT gen_random_uuid(), j.id, j.attempt_count + 1, s.worker_id, 'running',
          now() + $6 * interval '1 millisecond',
          clock_timestamp()
     FROM jobs j JOIN c ON c.id = j.id JOIN seats s ON s.seat = c.seat
   RETURNING id, job_id, number, worker_id),
u AS (
   UPDATE jobs j SET state = 'running', current_attempt_id = a.id,
          attempt_count = a.number, reason = '', updated_at = now()
     FROM a JOIN c ON c.id = a.job_id WHERE j.id = a.job_id
   RETURNING a.worker_id, a.id AS attempt_id, j.id AS job_id, a.number, j.argv, j.env,
             j.params, j.timeout_ms, j.outputs, j.trace_parent, j.limits, j.secret_env,
             extract(epoch FROM now() - c.due)::float8 AS waited)
-- At least one row per worker: its room (free slots by the running count) says whether
-- fewer jobs than asked for means no due job or no room yet.
SELECT w.worker_id AS for_worker, w.n AS room, u.*
  FROM w LEFT JOIN u ON u.worker_id = w.worker_id
 ORDER BY w.ord
