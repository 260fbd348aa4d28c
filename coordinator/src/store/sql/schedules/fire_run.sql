UPDATE schedule_runs SET status = 'fired'
WHERE schedule = $1 AND fire_time = $2 AND status = 'held'
