SELECT fingerprint, response FROM request_ids
WHERE caller = $1 AND method = $2 AND request_id = $3
