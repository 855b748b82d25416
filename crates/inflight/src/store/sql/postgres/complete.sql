-- Marks done the jobs of run $1 still claimed under their tokens (jobs $2, tokens $3, attempts $4): the fence.
-- Answers the jobs it marked; a job whose claim was taken over, released or finished is left as it is.
UPDATE inflight.jobs j
SET state = 2, worker = NULL, lease_expires_at = NULL, attempts = c.attempts
FROM unnest($2::bigint[], $3::bigint[], $4::integer[]) AS c (seq, token, attempts)
WHERE j.run = $1 AND j.seq = c.seq AND j.state = 1 AND j.lease_token = c.token
RETURNING j.seq
