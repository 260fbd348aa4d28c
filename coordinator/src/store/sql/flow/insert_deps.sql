INSERT INTO job_deps (job_id, depends_on) SELECT $1, unnest($2::uuid[])
