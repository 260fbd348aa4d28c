SELECT u.id, coalesce(x.original_job_id, x.id) AS root, n.id AS newest,
     n.state
FROM unnest($1::uuid[]) u(id)
LEFT JOIN jobs x ON x.id = u.id
LEFT JOIN LATERAL (
     SELECT n.id, n.state FROM jobs n
      WHERE n.id = x.id OR (n.original_job_id = coalesce(x.original_job_id, x.id)
                            AND n.created_at > x.created_at)
      ORDER BY n.created_at DESC, n.id DESC LIMIT 1) n ON true
