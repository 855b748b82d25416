-- The workflow changed: every finished job's output line is rebuilt, and jobs that failed in a step that
-- changed (?1: a JSON array of step names) are tried again. Finished steps are kept where they still match.
UPDATE jobs SET status = 0, attempts = 0, out_ord = NULL, error_code = NULL, error_message = NULL,
    response = NULL, status_code = NULL, step = NULL
WHERE status = 2 OR (status = 3 AND step IN (SELECT value FROM json_each(?1)))
