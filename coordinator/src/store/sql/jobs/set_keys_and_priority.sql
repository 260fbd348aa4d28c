UPDATE jobs SET concurrency_keys = $2, priority = $3 WHERE id = $1
