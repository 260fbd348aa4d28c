SELECT coalesce(o.original_job_id, u.id)::text
FROM unnest($1::uuid[]) u(id) LEFT JOIN jobs o ON o.id = u.id
