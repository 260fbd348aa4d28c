WITH counts AS (
   SELECT queue, count(*) FILTER (WHERE state = 'pending') AS pending,
          count(*) FILTER (WHERE state = 'running') AS running
     FROM jobs WHERE state IN ('pending', 'running') GROUP BY queue)
SELECT coalesce(s.queue, c.queue), coalesce(s.paused, false),
       coalesce(c.pending, 0), coalesce(c.running, 0)
  FROM queue_settings s FULL JOIN counts c ON c.queue = s.queue
 ORDER BY 1 LIMIT 1000
