SELECT state FROM notifications WHERE id = $1
