DELETE FROM request_ids
WHERE caller = $1 AND method = $2 AND request_id = $3 AND response IS NULL
