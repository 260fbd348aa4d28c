-- Rows the alert evaluator has folded into its windows are not needed again: kept, they
-- were two rows per job for alerts.retention (7 days by default), about 19 GB at a steady
-- 170 jobs/s.
DELETE FROM outbox WHERE id = ANY($1)
