SELECT fire_time FROM schedule_runs WHERE schedule = $1 AND status = 'held'
ORDER BY fire_time
