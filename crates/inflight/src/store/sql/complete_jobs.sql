-- Unfinished jobs that already have a result for each of the workflow's ?1 steps.
SELECT seq FROM jobs j
WHERE status = 0 AND (SELECT COUNT(*) FROM step_results r WHERE r.job_seq = j.seq) = ?1
ORDER BY seq
