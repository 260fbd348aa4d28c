SELECT id FROM jobs WHERE retry_of = $1 ORDER BY created_at
