-- Makes worker $2's unfinished claims in run $1 ready again at once; their tokens are stale from now on (the
-- next claim of each job gives a new one, and a write needs the job claimed).
UPDATE inflight.jobs SET state = 0, worker = NULL, lease_expires_at = NULL
WHERE run = $1 AND worker = $2 AND state = 1
