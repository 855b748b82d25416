-- The metadata of run $1 whose keys start with $2, in key order.
SELECT key, value FROM inflight.meta WHERE run = $1 AND starts_with(key, $2) ORDER BY key
