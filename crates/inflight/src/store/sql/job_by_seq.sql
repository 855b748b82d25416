-- A pending job by its sequence number (a claim that expired or was released, handed out again).
SELECT seq, id, endpoint, body, attempts, line FROM jobs WHERE seq = ?1 AND status = 0
