UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()),
updated_at = now() WHERE id = $1
