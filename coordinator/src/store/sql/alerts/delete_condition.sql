DELETE FROM alert_conditions WHERE rule = $1 AND key = $2
