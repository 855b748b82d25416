SELECT seq, id, status_code, request_id, response, latency_ms
FROM jobs WHERE status = 2 AND out_ord >= ?1 ORDER BY out_ord
