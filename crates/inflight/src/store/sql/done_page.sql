-- Up to ?2 results from position ?1 on, in commit order (OUT.jsonl's order), with their positions.
SELECT out_ord, seq, id, status_code, request_id, response, latency_ms
FROM jobs WHERE status = 2 AND out_ord >= ?1 ORDER BY out_ord LIMIT ?2
