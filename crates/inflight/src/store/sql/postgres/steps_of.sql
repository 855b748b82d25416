-- The finished steps of jobs $2 of run $1, in each job's step order.
SELECT seq, step, ord, fingerprint, output, response, attempts, invalid, prompt_tokens, completion_tokens, sent_at,
    finished_at
FROM inflight.step_results WHERE run = $1 AND seq = ANY($2) ORDER BY seq, ord
