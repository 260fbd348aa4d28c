UPDATE attempts SET logs_purged_at = now(), log_kept_bytes = 0 WHERE id = ANY($1)
