SELECT min(not_before) FROM jobs WHERE state = 'pending' AND not_before > now()
AND not_before < '3000-01-01'
