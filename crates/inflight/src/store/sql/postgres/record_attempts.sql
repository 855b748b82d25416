-- Records the attempts spent on jobs of run $1 still claimed under their tokens (jobs $2, tokens $3, attempts
-- $4), before their requests are sent. Answers the jobs it wrote.
UPDATE inflight.jobs j
SET attempts = a.attempts
FROM unnest($2::bigint[], $3::bigint[], $4::integer[]) AS a (seq, token, attempts)
WHERE j.run = $1 AND j.seq = a.seq AND j.state = 1 AND j.lease_token = a.token
RETURNING j.seq
