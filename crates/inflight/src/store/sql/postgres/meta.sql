-- Value $2 of run $1's metadata.
SELECT value FROM inflight.meta WHERE run = $1 AND key = $2
