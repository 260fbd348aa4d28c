SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::int8
FROM pg_partition_tree('log_chunks')
