UPDATE jobs SET has_dependants = true WHERE id = $1 RETURNING state
