UPDATE outbox SET delivered_at = now() WHERE id = ANY($1)
