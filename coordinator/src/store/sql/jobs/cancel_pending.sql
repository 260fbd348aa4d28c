UPDATE jobs SET state = 'cancelled', reason = 'cancelled while pending',
finished_at = now(), updated_at = now() WHERE id = $1
