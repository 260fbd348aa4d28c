DELETE FROM schedule_runs WHERE (schedule, fire_time) IN (
SELECT schedule, fire_time FROM schedule_runs
 WHERE status = 'skipped' AND job_id IS NULL
   AND created_at < now() - $1 * interval '1 second' LIMIT $2)
