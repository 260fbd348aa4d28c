INSERT INTO queue_settings AS s (queue, paused, paused_at, updated_at)
VALUES ($1, $2, CASE WHEN $2 THEN now() END, now())
ON CONFLICT (queue) DO UPDATE SET paused = $2,
    paused_at = CASE WHEN $2 THEN coalesce(s.paused_at, now()) END,
    updated_at = now()
