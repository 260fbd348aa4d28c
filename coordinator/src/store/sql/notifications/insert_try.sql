INSERT INTO notification_attempts (notification_id, try, coordinator_id, outcome, detail)
VALUES ($1, (SELECT coalesce(max(try), 0) + 1 FROM notification_attempts
              WHERE notification_id = $1), $2, $3, $4)
