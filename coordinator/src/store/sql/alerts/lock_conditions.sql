SELECT key, detail FROM alert_conditions WHERE rule = $1 FOR UPDATE
