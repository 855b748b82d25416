-- Records finished steps of jobs of run $1 still claimed under their tokens ($2 jobs, $3 tokens, then each
-- step's columns); a step a job already has is kept. Answers (job, step) of every step whose claim holds.
WITH s AS (
    SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::integer[], $6::text[], $7::text[], $8::text[],
        $9::integer[], $10::integer[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[])
        AS s (seq, token, step, ord, fingerprint, output, response, attempts, invalid, prompt_tokens,
              completion_tokens, sent_at, finished_at)
), held AS (
    SELECT s.* FROM s JOIN inflight.jobs j ON j.run = $1 AND j.seq = s.seq AND j.state = 1 AND j.lease_token = s.token
), written AS (
    INSERT INTO inflight.step_results (run, seq, step, ord, fingerprint, output, response, attempts, invalid,
        prompt_tokens, completion_tokens, sent_at, finished_at)
    SELECT $1, seq, step, ord, fingerprint, output, response, attempts, invalid, prompt_tokens, completion_tokens,
        sent_at, finished_at
    FROM held
    ON CONFLICT (run, seq, step) DO NOTHING
)
SELECT seq, step FROM held
