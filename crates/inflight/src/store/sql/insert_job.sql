INSERT OR IGNORE INTO jobs (line, id, endpoint, body, queued_at) VALUES (?1, ?2, ?3, ?4, ?5)
