-- Whether every transaction below $1 has ended (committed or rolled back).
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 >= $1
