SELECT notification_id, try, at, outcome, detail, coordinator_id
 FROM notification_attempts WHERE notification_id = ANY($1)
ORDER BY notification_id, try
