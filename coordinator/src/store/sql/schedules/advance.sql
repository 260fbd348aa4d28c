UPDATE schedules SET next_fire_at = $2, dropped_ticks = dropped_ticks + $3,
last_missed_at = CASE WHEN $3 > 0 THEN now() ELSE last_missed_at END,
last_missed_reason = CASE WHEN $3 > 0 THEN $4 ELSE last_missed_reason END,
updated_at = now() WHERE name = $1
