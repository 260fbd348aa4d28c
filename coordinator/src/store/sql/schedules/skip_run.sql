UPDATE schedule_runs SET status = 'skipped', reason = $3
WHERE schedule = $1 AND fire_time = $2 AND status = 'held'
