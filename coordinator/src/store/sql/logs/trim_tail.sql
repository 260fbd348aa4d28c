WITH t AS (
   SELECT seq, octet_length(data) AS len,
          sum(octet_length(data)) OVER (ORDER BY seq) AS cum
     FROM log_chunks WHERE attempt_id = $1 AND seq > $2 AND log_part = $4),
d AS (
   DELETE FROM log_chunks l USING t
    WHERE l.attempt_id = $1 AND l.seq = t.seq AND l.log_part = $4
      AND t.cum - t.len < $3
   RETURNING t.len)
SELECT coalesce(sum(len), 0)::int8 FROM d
