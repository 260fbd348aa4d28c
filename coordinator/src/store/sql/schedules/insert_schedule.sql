INSERT INTO schedules (name, cron, timezone, spec, retry_policy, catch_up,
overlap, paused, next_fire_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (name) DO NOTHING RETURNING name, cron, timezone, spec, retry_policy, catch_up, overlap,
       paused, next_fire_at, dropped_ticks, created_at
