UPDATE jobs SET attempts = ?2, last_error = ?3 WHERE seq = ?1 AND status = 0
