SELECT at, resources FROM worker_samples
WHERE worker_id = $1 AND at >= $2 ORDER BY at LIMIT 2000
