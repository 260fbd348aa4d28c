-- Only while an event rule wants outbox rows (V32).
INSERT INTO outbox (job_id, event, payload)
SELECT $1::uuid, $2::text, $3::jsonb
 WHERE pg_sequence_last_value('drover_outbox_gate') > extract(epoch FROM statement_timestamp())
