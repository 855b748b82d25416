-- A job claimed from a shared run, kept under the shared run's sequence number (a workflow worker's round).
INSERT INTO jobs (seq, line, id, endpoint, body, queued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
