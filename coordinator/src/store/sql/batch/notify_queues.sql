SELECT pg_notify($1, q) FROM unnest($2::text[]) q
