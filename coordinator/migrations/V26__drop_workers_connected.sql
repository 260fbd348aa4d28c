-- Nothing reads workers.connected: a worker's state follows from last_seen_at (and
-- whether its session is open is known only to the coordinator holding it).
ALTER TABLE workers DROP COLUMN connected;
