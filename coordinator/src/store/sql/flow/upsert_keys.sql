-- New keys are inserted; existing ones are updated only when their settings changed or
-- they were last touched an hour ago (which keeps a key in use from being deleted). An
-- `ON CONFLICT DO UPDATE ... WHERE` locked every existing key row even when its WHERE was
-- false, so each submit held its keys' rows to its commit and deadlocked with claims and
-- results taking the same keys (23 deadlocks in 60 000 keyed jobs, each a 1 s stall). The
-- UPDATE below locks only the rows it changes. Keys go in name order, so two submits wait
-- for each other's new keys in one order.
WITH u AS (
   SELECT * FROM unnest($1::text[], $2::int4[], $3::float8[], $4::float8[]) u(k, l, r, b)
    ORDER BY k),
ins AS (
   INSERT INTO concurrency_keys (key, max_running, rate_per_sec, burst, tokens)
   SELECT u.k, u.l, u.r, u.b, coalesce(u.b, 0) FROM u
   ON CONFLICT (key) DO NOTHING)
UPDATE concurrency_keys k
   SET max_running = u.l, rate_per_sec = u.r, burst = u.b,
       tokens = least(k.tokens, coalesce(u.b, k.tokens)), updated_at = now()
  FROM u
 WHERE k.key = u.k
   AND (k.updated_at < now() - interval '1 hour'
        OR k.max_running <> u.l
        OR k.rate_per_sec IS DISTINCT FROM u.r
        OR k.burst IS DISTINCT FROM u.b)
