-- Keeps a gate (a sequence, V31/V32) open until $2 seconds from now, database clock.
-- greatest(): never shortens what another coordinator asked for.
SELECT setval($1::text::regclass,
              greatest(coalesce(pg_sequence_last_value($1::text::regclass), 0),
                       extract(epoch FROM now())::int8 + $2))
