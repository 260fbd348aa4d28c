-- Concurrency keys that no pending or running job carries and that nothing has used for
-- $1 seconds. The next submit naming one creates it again from its own limits (a rate
-- bucket idle that long is full anyway). A submit in flight has upserted the row, and the
-- upsert refreshes updated_at when it is older than an hour (flow/upsert_keys.sql), so the
-- recheck of the outer conditions on the row's latest version keeps it.
DELETE FROM concurrency_keys k
 WHERE k.key IN (
       SELECT c.key FROM concurrency_keys c
        WHERE c.running = 0 AND c.updated_at < now() - $1 * interval '1 second'
          AND NOT EXISTS (SELECT 1 FROM jobs j
                           WHERE j.state IN ('pending', 'running')
                             AND j.concurrency_keys <> '{}'
                             AND c.key = ANY (j.concurrency_keys))
        LIMIT $2)
   AND k.running = 0 AND k.updated_at < now() - $1 * interval '1 second'
