-- A worker joins run $1.
INSERT INTO inflight.workers (run, host, pid, servers) VALUES ($1, $2, $3, $4) RETURNING id
