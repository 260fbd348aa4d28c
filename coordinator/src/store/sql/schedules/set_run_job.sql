UPDATE schedule_runs SET job_id = $3 WHERE schedule = $1 AND fire_time = $2
