UPDATE jobs SET attempts = ?2, last_error = COALESCE(?3, last_error) WHERE seq = ?1 AND status = 0
