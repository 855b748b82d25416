-- Extends to $4 milliseconds from now the leases of run $1 still held under their tokens (jobs $2, tokens $3).
UPDATE inflight.jobs j
SET lease_expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
FROM unnest($2::bigint[], $3::bigint[]) AS l (seq, token)
WHERE j.run = $1 AND j.seq = l.seq AND j.state = 1 AND j.lease_token = l.token
RETURNING j.seq, j.lease_token
