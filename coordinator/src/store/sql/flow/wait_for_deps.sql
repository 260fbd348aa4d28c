UPDATE jobs SET not_before = '3000-01-01 00:00:00+00' WHERE id = $1 AND EXISTS (
SELECT 1 FROM jobs o WHERE o.id = ANY ($2) AND o.state <> 'succeeded')
