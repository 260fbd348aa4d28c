-- Most jobs carry no idempotency key. The UNIQUE constraint's index still held an entry for
-- each of them (NULL), written when the job is inserted and again at each update that
-- cannot be HOT (lease and end change indexed columns): three index insertions per job that
-- no lookup ever reads. A partial unique index enforces the same rule on the keys that
-- exist; submits name its predicate in ON CONFLICT.
CREATE UNIQUE INDEX jobs_idempotency_key_idx ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE jobs DROP CONSTRAINT jobs_idempotency_key_key;
