-- Marks failed for good the jobs of run $1 still claimed under their tokens (fenced as complete.sql), with
-- their error records. Answers the jobs it marked.
UPDATE inflight.jobs j
SET state = 3, worker = NULL, lease_expires_at = NULL, attempts = f.attempts, status_code = f.status_code,
    response = f.response, error_code = f.code, error_message = f.message, step = f.step, sent_at = f.sent_at,
    finished_at = f.finished_at
FROM unnest($2::bigint[], $3::bigint[], $4::integer[], $5::integer[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::bigint[], $11::bigint[])
    AS f (seq, token, attempts, status_code, response, code, message, step, sent_at, finished_at)
WHERE j.run = $1 AND j.seq = f.seq AND j.state = 1 AND j.lease_token = f.token
RETURNING j.seq
