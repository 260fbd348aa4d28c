SELECT w.id, w.hostname, w.labels, w.queues, w.slots, w.version,
      w.last_seen_at,
      (extract(epoch FROM now() - w.last_seen_at) * 1000)::int8 AS ago,
      w.resources, w.paused_reason, w.draining, w.containment,
      w.protocol_version,
      (SELECT count(*) FROM attempts a
        WHERE a.worker_id = w.id AND a.state = 'running') AS running
 FROM workers w WHERE w.last_seen_at > now() - interval '7 days'
ORDER BY w.id
