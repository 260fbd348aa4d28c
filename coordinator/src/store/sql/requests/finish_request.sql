UPDATE request_ids SET response = $4
WHERE caller = $1 AND method = $2 AND request_id = $3
