SELECT j.id, CASE
  WHEN j.state <> 'pending' THEN ''
  WHEN j.not_before >= '3000-01-01 00:00:00+00' THEN 'after job ' || coalesce((
       SELECT string_agg(d.depends_on::text, ', ' ORDER BY d.depends_on)
         FROM job_deps d JOIN jobs o ON o.id = d.depends_on
        WHERE d.job_id = j.id AND o.state <> 'succeeded'), '?')
  WHEN EXISTS (SELECT 1 FROM queue_settings qs
                WHERE qs.queue = j.queue AND qs.paused) THEN 'queue paused'
  WHEN j.not_before > now() THEN 'backoff until ' ||
       to_char(j.not_before AT TIME ZONE 'UTC',
               'YYYY-MM-DD"T"HH24:MI:SS"Z"')
  WHEN EXISTS (SELECT 1 FROM concurrency_keys k
                WHERE k.key = ANY (j.concurrency_keys)
                  AND k.running < k.max_running
                  AND k.rate_per_sec IS NOT NULL AND least(k.burst,
                      k.tokens + extract(epoch FROM now() - k.refilled_at)
                      * k.rate_per_sec) < 1)
       THEN 'rate limited until ' || (
       SELECT to_char(max(k.refilled_at + (1 - k.tokens) / k.rate_per_sec
                          * interval '1 second') AT TIME ZONE 'UTC',
                      'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
         FROM concurrency_keys k WHERE k.key = ANY (j.concurrency_keys)
          AND k.rate_per_sec IS NOT NULL AND k.tokens < 1)
  ELSE coalesce((
       SELECT 'concurrency key ' || k.key || ' ' || k.running || '/' ||
              k.max_running FROM concurrency_keys k
        WHERE k.key = ANY (j.concurrency_keys)
          AND k.running >= k.max_running ORDER BY k.key LIMIT 1), '')
END FROM jobs j WHERE j.id = ANY ($1)
