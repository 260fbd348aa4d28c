INSERT INTO failure_groups AS g (queue, fingerprint, normalised, sample,
       last_job_id, last_attempt_id, exit_codes)
VALUES ($1, $2, $3, $4, $5, $6,
        CASE WHEN $7::int4 IS NULL THEN '{}'::int4[] ELSE ARRAY[$7::int4] END)
ON CONFLICT (queue, fingerprint) DO UPDATE SET
       last_seen_at = now(), count = g.count + 1,
       last_job_id = EXCLUDED.last_job_id,
       last_attempt_id = EXCLUDED.last_attempt_id,
       exit_codes = CASE WHEN $7::int4 IS NULL OR $7::int4 = ANY(g.exit_codes)
                           OR cardinality(g.exit_codes) >= 16
                         THEN g.exit_codes ELSE g.exit_codes || $7::int4 END
RETURNING (xmax = 0) AS inserted
