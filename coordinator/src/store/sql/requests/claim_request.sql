INSERT INTO request_ids (caller, method, request_id, fingerprint)
VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING
