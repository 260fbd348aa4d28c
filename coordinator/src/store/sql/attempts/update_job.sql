UPDATE jobs SET state = $2, current_attempt_id = NULL, failure_count = $3,
      lost_count = $4, reason = $5, updated_at = now(),
      not_before = CASE WHEN $6::float8 IS NULL THEN not_before
                        ELSE now() + $6 * interval '1 millisecond' END,
      finished_at = CASE WHEN $7 THEN now() END
WHERE id = $1
