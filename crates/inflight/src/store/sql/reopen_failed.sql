UPDATE jobs SET status = 0, attempts = 0, out_ord = NULL, error_code = NULL, error_message = NULL,
    response = NULL, status_code = NULL
WHERE status = 3
