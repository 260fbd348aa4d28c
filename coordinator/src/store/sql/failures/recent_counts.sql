SELECT j.queue, a.fingerprint, coalesce(min(g.sample), ''), count(*)
 FROM attempts a JOIN jobs j ON j.id = a.job_id
 LEFT JOIN failure_groups g ON g.queue = j.queue AND g.fingerprint = a.fingerprint
WHERE a.fingerprint IS NOT NULL
  AND a.finished_at >= now() - $1 * interval '1 second'
GROUP BY 1, 2
