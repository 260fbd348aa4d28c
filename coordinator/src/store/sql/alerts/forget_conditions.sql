DELETE FROM alert_conditions WHERE NOT (rule = ANY($1))
