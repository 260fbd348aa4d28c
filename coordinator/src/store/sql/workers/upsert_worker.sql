INSERT INTO workers (id, hostname, labels, queues, slots, version,
   coordinator_id, last_seen_at, containment, protocol_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8, $9)
ON CONFLICT (id) DO UPDATE SET hostname = $2, labels = $3, queues = $4,
   slots = $5, version = $6, coordinator_id = $7,
   last_seen_at = now(), containment = $8, protocol_version = $9
