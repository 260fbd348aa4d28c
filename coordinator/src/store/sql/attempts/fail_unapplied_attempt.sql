UPDATE attempts SET state = 'failed_permanent', finished_at = now(), reason = $2
WHERE id = $1 AND state = 'running' RETURNING job_id
