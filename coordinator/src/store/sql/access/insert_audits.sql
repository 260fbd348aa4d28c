INSERT INTO audit_log (actor, role, method, target, peer, outcome)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
