SELECT d.job_id, coalesce(o.original_job_id, o.id)::text FROM job_deps d
JOIN jobs o ON o.id = d.depends_on WHERE d.job_id = ANY($1)
