INSERT INTO alert_conditions (rule, key, detail) VALUES ($1, $2, $3)
ON CONFLICT (rule, key) DO NOTHING
