-- created_at is the coordinator's clock reading that next_fire_at was computed from, so
-- the first tick is always the first after the recorded creation.
INSERT INTO schedules (name, cron, timezone, spec, retry_policy, catch_up,
overlap, paused, next_fire_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (name) DO NOTHING RETURNING name, cron, timezone, spec, retry_policy, catch_up, overlap,
       paused, next_fire_at, dropped_ticks, created_at
