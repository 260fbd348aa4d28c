INSERT INTO schedule_runs (schedule, fire_time, status)
VALUES ($1, $2, 'held') ON CONFLICT DO NOTHING
