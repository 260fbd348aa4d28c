SELECT queue, count(*) FILTER (WHERE state = 'pending'),
      count(*) FILTER (WHERE state = 'running'),
      (extract(epoch FROM now() - min(not_before)
          FILTER (WHERE state = 'pending' AND not_before <= now()))
          * 1000)::int8
 FROM jobs WHERE state IN ('pending', 'running')
GROUP BY queue ORDER BY queue
