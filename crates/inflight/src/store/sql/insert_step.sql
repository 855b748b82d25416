INSERT OR IGNORE INTO step_results (job_seq, step, ord, fingerprint, output, response, attempts, invalid,
    prompt_tokens, completion_tokens, sent_at, finished_at, latency_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12 - ?11)
