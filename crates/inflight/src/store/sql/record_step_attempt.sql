INSERT INTO step_attempts (job_seq, step, fingerprint, attempts, last_error) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (job_seq, step) DO UPDATE SET fingerprint = excluded.fingerprint, attempts = excluded.attempts,
    last_error = COALESCE(excluded.last_error, step_attempts.last_error)
