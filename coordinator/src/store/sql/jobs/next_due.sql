SELECT least(
  (SELECT min(not_before) FROM jobs
    WHERE state = 'pending' AND concurrency_keys = '{}'
      AND not_before > now() AND not_before < '3000-01-01'),
  (SELECT min(not_before) FROM jobs
    WHERE state = 'pending' AND concurrency_keys <> '{}'
      AND not_before > now() AND not_before < '3000-01-01'))
