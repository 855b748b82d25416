-- Sets value $2 of run $1's metadata to $3.
INSERT INTO inflight.meta (run, key, value) VALUES ($1, $2, $3)
ON CONFLICT (run, key) DO UPDATE SET value = excluded.value
