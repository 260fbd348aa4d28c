UPDATE jobs SET priority = $2,
not_before = not_before - $3 * interval '1 millisecond' WHERE id = $1
