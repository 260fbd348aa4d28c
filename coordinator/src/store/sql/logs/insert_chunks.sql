INSERT INTO log_chunks (attempt_id, seq, stream, time, data, log_part)
SELECT $1, u.*, $6
  FROM unnest($2::int8[], $3::int2[], $4::timestamptz[], $5::bytea[]) u
ON CONFLICT (attempt_id, seq, log_part) DO NOTHING
RETURNING seq, octet_length(data)
