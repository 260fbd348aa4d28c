UPDATE schedules SET last_missed_at = now(), last_missed_reason = $2 WHERE name = $1
