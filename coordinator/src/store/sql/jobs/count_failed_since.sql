SELECT count(*) FROM jobs WHERE state = 'permanent_failed'
AND finished_at > now() - $1 * interval '1 millisecond'
