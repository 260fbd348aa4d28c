UPDATE concurrency_keys SET running = running - 1,
      tokens = CASE WHEN rate_per_sec IS NULL THEN tokens
               ELSE tokens + 1 END
WHERE key = ANY ($1)
