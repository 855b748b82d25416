-- Batches still to run or to finish, first created first.
SELECT body FROM batches
WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
ORDER BY seq
