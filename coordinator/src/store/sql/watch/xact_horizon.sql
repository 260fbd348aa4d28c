-- The first transaction id not yet started: every transaction running now has a smaller one.
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8
