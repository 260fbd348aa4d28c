UPDATE schedules SET paused = $2, next_fire_at = $3, updated_at = now()
WHERE name = $1 RETURNING name, cron, timezone, spec, retry_policy, catch_up, overlap,
       paused, next_fire_at, dropped_ticks, created_at
