DELETE FROM jobs WHERE id = ANY($1)
AND state IN ('succeeded', 'permanent_failed', 'cancelled')
