-- Only while the logs gate is armed (V33): some coordinator has a log follower.
SELECT pg_notify($1, job_id::text) FROM attempts
 WHERE id = $2
   AND pg_sequence_last_value('drover_logs_gate') > extract(epoch FROM statement_timestamp())
