-- The alert evaluator now deletes outbox rows as it reads them, so no row is ever marked
-- read: rows marked read before this version are deleted here (they were kept only for
-- alerts.retention), and the column and its partial index go. The index was a second
-- copy of the primary key, written once per job event.
DELETE FROM outbox WHERE delivered_at IS NOT NULL;
DROP INDEX outbox_undelivered_idx;
ALTER TABLE outbox DROP COLUMN delivered_at;
