UPDATE concurrency_keys SET running = running + 1, updated_at = now(),
      tokens = CASE WHEN rate_per_sec IS NULL THEN tokens ELSE
        least(burst, tokens + extract(epoch FROM now() - refilled_at)
                              * rate_per_sec) - 1 END,
      refilled_at = CASE WHEN rate_per_sec IS NULL THEN refilled_at
                    ELSE now() END
WHERE key = ANY ($1) AND running < max_running
  AND (rate_per_sec IS NULL OR least(burst, tokens +
       extract(epoch FROM now() - refilled_at) * rate_per_sec) >= 1)
RETURNING key
