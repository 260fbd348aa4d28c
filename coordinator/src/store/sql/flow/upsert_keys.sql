INSERT INTO concurrency_keys AS k (key, max_running, rate_per_sec, burst, tokens)
SELECT u.k, u.l, u.r, u.b, coalesce(u.b, 0)
  FROM unnest($1::text[], $2::int4[], $3::float8[], $4::float8[]) u(k, l, r, b)
ON CONFLICT (key) DO UPDATE SET max_running = EXCLUDED.max_running,
       rate_per_sec = EXCLUDED.rate_per_sec, burst = EXCLUDED.burst,
       tokens = least(k.tokens, coalesce(EXCLUDED.burst, k.tokens)), updated_at = now()
 WHERE k.updated_at < now() - interval '1 hour'
    OR k.max_running <> EXCLUDED.max_running
    OR k.rate_per_sec IS DISTINCT FROM EXCLUDED.rate_per_sec
    OR k.burst IS DISTINCT FROM EXCLUDED.burst
