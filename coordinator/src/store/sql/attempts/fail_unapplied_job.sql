UPDATE jobs SET state = 'permanent_failed', current_attempt_id = NULL, reason = $2,
      updated_at = now(), finished_at = now()
WHERE id = $1 AND current_attempt_id = $3
