UPDATE jobs SET status = 2, attempts = ?2, sent_at = ?3, first_byte_at = ?4, finished_at = ?5, latency_ms = ?6,
    prompt_tokens = ?7, completion_tokens = ?8, finish_reason = ?9, status_code = ?10, request_id = ?11,
    response = ?12, error_code = NULL, error_message = NULL, out_ord = ?13
WHERE seq = ?1 AND status = 0
