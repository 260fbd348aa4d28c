DELETE FROM schedule_runs WHERE job_id = ANY($1)
