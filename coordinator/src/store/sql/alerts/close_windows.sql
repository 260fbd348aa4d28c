DELETE FROM alert_windows WHERE (rule, key) IN
  (SELECT rule, key FROM alert_windows WHERE closes_at <= now() LIMIT 500
   FOR UPDATE SKIP LOCKED)
RETURNING rule, key, count, sample, examples
