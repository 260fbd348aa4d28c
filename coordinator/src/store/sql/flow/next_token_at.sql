SELECT min(refilled_at + (1 - tokens) / rate_per_sec * interval '1 second')
 FROM concurrency_keys
WHERE key = ANY ($1) AND rate_per_sec IS NOT NULL AND tokens < 1
