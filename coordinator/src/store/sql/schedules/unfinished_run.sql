SELECT r.job_id FROM schedule_runs r JOIN jobs j ON j.id = r.job_id
WHERE r.schedule = $1 AND r.status = 'fired'
  AND j.state IN ('pending', 'running')
ORDER BY r.fire_time DESC LIMIT 1
