SELECT name, spec->>'queue' AS queue,
     extract(epoch FROM now() - last_missed_at)::bigint AS missed_ago,
     last_missed_reason,
     CASE WHEN next_fire_at <= now()
          THEN extract(epoch FROM now() - next_fire_at)::bigint END AS overdue
FROM schedules WHERE NOT paused ORDER BY name LIMIT 10000
