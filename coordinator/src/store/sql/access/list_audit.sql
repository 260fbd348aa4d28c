SELECT id, at, actor, role, method, target, peer, outcome FROM audit_log
WHERE ($1::timestamptz IS NULL OR at >= $1)
  AND ($2::int8 IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3
