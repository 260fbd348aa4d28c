INSERT INTO alert_windows AS w (rule, key, closes_at, count, sample, examples)
VALUES ($1, $2, now() + $3 * interval '1 second', $4, $5, $6)
ON CONFLICT (rule, key) DO UPDATE SET count = w.count + EXCLUDED.count,
       examples = CASE WHEN jsonb_array_length(w.examples) >= $7 THEN w.examples
                       ELSE w.examples || EXCLUDED.examples END
