INSERT INTO outbox (job_id, event, payload) VALUES ($1, $2, $3)
