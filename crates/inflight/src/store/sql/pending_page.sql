SELECT seq, id, endpoint, body, attempts, line FROM jobs WHERE status = 0 AND seq > ?1 ORDER BY seq LIMIT ?2
