-- How many jobs, counting up to ?3, whose step ?1 can run (the conditions of ready_units.sql).
SELECT COUNT(*) FROM (
    SELECT 1 FROM jobs j
    WHERE j.status = 0
      AND NOT EXISTS (SELECT 1 FROM step_results r WHERE r.job_seq = j.seq AND r.step = ?1)
      AND (SELECT COUNT(*) FROM step_results r
           WHERE r.job_seq = j.seq AND r.step IN (SELECT value FROM json_each(?2))) = json_array_length(?2)
    LIMIT ?3
)
