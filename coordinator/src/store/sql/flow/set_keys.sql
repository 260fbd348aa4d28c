UPDATE jobs SET concurrency_keys = $2 WHERE id = $1
