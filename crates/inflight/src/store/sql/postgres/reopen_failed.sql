-- `--retry-failed`: every failed job of run $1 back to ready with a fresh budget of attempts and no error record.
UPDATE inflight.jobs
SET state = 0, attempts = 0, status_code = NULL, response = NULL, error_code = NULL, error_message = NULL,
    step = NULL, sent_at = NULL, finished_at = NULL
WHERE run = $1 AND state = 3
