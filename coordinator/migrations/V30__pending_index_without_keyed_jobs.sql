-- The plain claim takes pending jobs without concurrency keys (keyed ones go through their
-- own transaction, which counts the keys) and walked jobs_pending_idx, which held every
-- pending job. Behind a backlog of keyed jobs it read each of them and kept none: with
-- 10 000 keyed jobs pending a claim took 2.5 ms and found nothing. Keyed pending jobs
-- already have their own index (jobs_pending_keyed_idx, V17), so the plain one leaves
-- them out and the two partial indexes split the pending jobs between them.
CREATE INDEX jobs_pending_plain_idx ON jobs (queue, not_before, id)
    WHERE state = 'pending' AND concurrency_keys = '{}';
DROP INDEX jobs_pending_idx;
