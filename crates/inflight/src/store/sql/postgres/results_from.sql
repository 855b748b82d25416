-- Up to $3 results of run $1 from position $2 on, in commit order.
SELECT r.ord, r.seq, j.id, r.status_code, r.request_id, r.response, r.latency_ms
FROM inflight.results r JOIN inflight.jobs j ON j.run = r.run AND j.seq = r.seq
WHERE r.run = $1 AND r.ord >= $2
ORDER BY r.ord
LIMIT $3
