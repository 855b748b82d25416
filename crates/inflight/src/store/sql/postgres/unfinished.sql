-- Up to $2 unfinished jobs of run $1 (ready or claimed), in sequence order, without claiming them.
SELECT seq, id, endpoint, body, attempts
FROM inflight.jobs WHERE run = $1 AND state IN (0, 1) ORDER BY seq LIMIT $2
