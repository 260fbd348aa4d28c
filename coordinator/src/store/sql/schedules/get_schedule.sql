SELECT name, cron, timezone, spec, retry_policy, catch_up, overlap,
       paused, next_fire_at, dropped_ticks, created_at FROM schedules WHERE name = $1
