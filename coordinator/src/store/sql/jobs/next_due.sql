-- The earliest time a pending job of one of these queues becomes due (retry backoff,
-- run_at), for the dispatcher's timer. One index probe per queue and kind (plain, keyed):
-- started at now() in (queue, not_before) order, so the due jobs of a backlog are never
-- read (over all queues at once it walked every pending job's entry: 1.7 ms a call with
-- 50 000 pending). Jobs waiting for dependencies have a far-future time: no timer for those.
SELECT min(d.due) FROM unnest($1::text[]) q(name)
CROSS JOIN LATERAL (
    (SELECT not_before AS due FROM jobs
      WHERE state = 'pending' AND concurrency_keys = '{}' AND queue = q.name
        AND not_before > now() AND not_before < '3000-01-01'
      ORDER BY not_before LIMIT 1)
    UNION ALL
    (SELECT not_before FROM jobs
      WHERE state = 'pending' AND concurrency_keys <> '{}' AND queue = q.name
        AND not_before > now() AND not_before < '3000-01-01'
      ORDER BY not_before LIMIT 1)) d
