-- Claims up to $3 jobs of run $1 for worker $2, for $4 milliseconds: ready jobs and claimed jobs whose lease has
-- expired, in sequence order. SKIP LOCKED passes over rows another claim is taking at this moment, so claimers
-- never wait for each other nor get the same job; ARRAY(...) runs the subquery once, so its LIMIT holds.
UPDATE inflight.jobs j
SET state = 1,
    lease_token = j.lease_token + 1,
    worker = $2,
    lease_expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
WHERE j.run = $1 AND j.seq = ANY (ARRAY(
    SELECT seq FROM inflight.jobs
    WHERE run = $1 AND state IN (0, 1) AND (state = 0 OR lease_expires_at <= clock_timestamp())
    ORDER BY seq
    LIMIT $3
    FOR UPDATE SKIP LOCKED))
RETURNING j.seq, j.id, j.endpoint, j.body, j.lease_token, j.attempts
