SELECT count(*) FILTER (WHERE state = 'dead'),
     count(*) FILTER (WHERE state = 'pending')
FROM notifications WHERE state <> 'delivered'
