INSERT INTO audit_log (actor, role, method, target, peer, outcome)
VALUES ($1, $2, $3, $4, $5, $6)
