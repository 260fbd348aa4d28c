SELECT params FROM jobs WHERE id = $1
