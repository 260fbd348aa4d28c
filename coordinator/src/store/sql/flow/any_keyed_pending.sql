SELECT EXISTS (SELECT 1 FROM jobs
WHERE state = 'pending' AND concurrency_keys <> '{}')
