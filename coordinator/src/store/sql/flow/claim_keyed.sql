WITH c AS (SELECT id, not_before AS due FROM jobs WHERE id = ANY ($1)),
a AS (
   INSERT INTO attempts (id, job_id, number, worker_id, state, lease_expires_at,
                         started_at)
   SELECT gen_random_uuid(), j.id, j.attempt_count + 1, $2, 'running',
          now() + $3 * interval '1 millisecond',
          clock_timestamp()
     FROM jobs j JOIN c ON c.id = j.id
   RETURNING id, job_id, number)
UPDATE jobs j SET state = 'running', current_attempt_id = a.id,
       attempt_count = a.number, reason = '', updated_at = now()
  FROM a JOIN c ON c.id = a.job_id WHERE j.id = a.job_id
RETURNING a.id AS attempt_id, j.id AS job_id, a.number, j.argv, j.env,
          j.params, j.timeout_ms, j.outputs, j.trace_parent, j.limits,
          j.secret_env, extract(epoch FROM now() - c.due)::float8 AS waited
