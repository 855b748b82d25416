-- Failed jobs about to be reopened (`--retry-failed`) get a fresh budget for their steps too.
DELETE FROM step_attempts WHERE job_seq IN (SELECT seq FROM jobs WHERE status = 3)
