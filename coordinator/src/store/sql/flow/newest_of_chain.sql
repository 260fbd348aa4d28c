SELECT n.id FROM jobs x JOIN jobs n
  ON n.id = x.id OR (n.original_job_id = coalesce(x.original_job_id, x.id)
                     AND n.created_at > x.created_at)
WHERE x.id = $1 ORDER BY n.created_at DESC, n.id DESC LIMIT 1
