SELECT queue, date_trunc('minute', finished_at) AS m, count(*) FROM jobs
WHERE state IN ('succeeded', 'permanent_failed', 'cancelled')
  AND finished_at > now() - make_interval(mins => $1)
GROUP BY 1, 2 ORDER BY 1, 2
