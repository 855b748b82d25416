-- Job ?1 is done once it has a result for each of the workflow's ?3 steps: its output line (?2 is its
-- position in OUT.jsonl) holds every step's output, usage and latency, in workflow order.
UPDATE jobs SET status = 2, out_ord = ?2, status_code = 200, error_code = NULL, error_message = NULL, step = NULL,
    sent_at = (SELECT MIN(sent_at) FROM step_results WHERE job_seq = ?1),
    finished_at = (SELECT MAX(finished_at) FROM step_results WHERE job_seq = ?1),
    latency_ms = (SELECT SUM(latency_ms) FROM step_results WHERE job_seq = ?1),
    attempts = (SELECT SUM(attempts) FROM step_results WHERE job_seq = ?1),
    prompt_tokens = (SELECT SUM(prompt_tokens) FROM step_results WHERE job_seq = ?1),
    completion_tokens = (SELECT SUM(completion_tokens) FROM step_results WHERE job_seq = ?1),
    response = (SELECT json_object('id', jobs.id, 'steps', json_group_object(step, json_object(
                    'output', json(output),
                    'usage', json_object('prompt_tokens', prompt_tokens, 'completion_tokens', completion_tokens),
                    'latency_ms', latency_ms, 'attempts', attempts) ORDER BY ord))
                FROM step_results WHERE job_seq = ?1)
WHERE seq = ?1 AND status = 0 AND (SELECT COUNT(*) FROM step_results WHERE job_seq = ?1) = ?3
RETURNING id, response, latency_ms
