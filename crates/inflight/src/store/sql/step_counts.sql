-- Per step: results, answers refused by its schema, and jobs that failed in it.
SELECT step, SUM(done), SUM(invalid), SUM(failed) FROM (
    SELECT step, 1 AS done, invalid, 0 AS failed FROM step_results
    UNION ALL
    SELECT step, 0, 0, 1 FROM jobs WHERE status = 3 AND step IS NOT NULL
) GROUP BY step
