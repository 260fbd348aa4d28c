INSERT INTO schedule_runs (schedule, fire_time, status, manual)
VALUES ($1, $2, 'held', true) ON CONFLICT DO NOTHING
