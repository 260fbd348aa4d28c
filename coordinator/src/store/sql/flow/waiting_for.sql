SELECT d.depends_on FROM job_deps d JOIN jobs o ON o.id = d.depends_on
WHERE d.job_id = $1 AND o.state <> 'succeeded' ORDER BY 1
