SELECT name FROM schedules s WHERE NOT paused AND (next_fire_at <= now()
   OR EXISTS (SELECT 1 FROM schedule_runs r
               WHERE r.schedule = s.name AND r.status = 'held'))
ORDER BY next_fire_at NULLS LAST LIMIT $1
