SELECT r.fire_time, r.status, r.manual, r.job_id, j.state, r.reason
 FROM schedule_runs r LEFT JOIN jobs j ON j.id = r.job_id
WHERE r.schedule = $1 ORDER BY r.fire_time DESC LIMIT $2
