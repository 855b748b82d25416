-- The failed jobs of run $1 with their error records, in input order (seq is the input line).
SELECT seq, id, status_code, response, error_code, error_message, step
FROM inflight.jobs WHERE run = $1 AND state = 3 ORDER BY seq
