SELECT
    COALESCE(SUM(status = 0), 0),
    COALESCE(SUM(status = 2), 0),
    COALESCE(SUM(status = 3), 0),
    (SELECT COUNT(*) FROM bad_lines),
    COALESCE(SUM(status = 2 AND finish_reason = 'length'), 0),
    COALESCE(SUM(prompt_tokens), 0),
    COALESCE(SUM(completion_tokens), 0),
    MIN(sent_at),
    MAX(finished_at)
FROM jobs
