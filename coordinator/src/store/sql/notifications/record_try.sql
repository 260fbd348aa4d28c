UPDATE notifications SET state = $2, tries = $3, last_error = $4,
      next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at
                             ELSE now() + $5 * interval '1 millisecond' END,
      finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
WHERE id = $1
