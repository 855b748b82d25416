SELECT seq, line, id, status_code, request_id, response, code, message, step FROM (
    SELECT out_ord, seq, line, id, status_code, request_id, response,
           error_code AS code, error_message AS message, step
    FROM jobs WHERE status = 3 AND out_ord >= ?1
    UNION ALL
    SELECT out_ord, NULL, line, custom_id, NULL, NULL, NULL, code, message, NULL
    FROM bad_lines WHERE out_ord >= ?1
) ORDER BY out_ord
