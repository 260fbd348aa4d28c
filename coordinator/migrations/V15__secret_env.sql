-- Secret references of a job (NAME -> "file:/path" or "env:NAME"). Only the references
-- are stored; workers read the values themselves when an attempt starts.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS secret_env jsonb NOT NULL DEFAULT '{}';
