UPDATE jobs SET status = 3, attempts = ?2, sent_at = ?3, finished_at = ?4, latency_ms = ?5, status_code = ?6,
    response = ?7, error_code = ?8, error_message = ?9, last_error = ?9, out_ord = ?10, step = ?11
WHERE seq = ?1 AND status = 0
