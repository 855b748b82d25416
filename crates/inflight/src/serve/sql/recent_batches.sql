-- The newest batches of every owner, for the dashboard.
SELECT body FROM batches ORDER BY seq DESC LIMIT ?1
