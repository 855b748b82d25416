-- The finished steps of job ?1 (a claimed job's, handed to a worker that goes on from them).
SELECT job_seq, step, ord, fingerprint, output, response, attempts, invalid, prompt_tokens, completion_tokens,
    sent_at, finished_at
FROM step_results WHERE job_seq = ?1 ORDER BY ord
