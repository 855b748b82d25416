-- Jobs after seq ?3 whose step ?1 can run: not finished, and every step it reads (?2, a JSON array of names)
-- finished. With the job's finished steps, which its template may read, and the attempts the step has spent
-- while its fingerprint was ?5.
SELECT j.seq, j.id, j.line, j.body,
    (SELECT json_group_object(r.step, json_object('output', json(r.output), 'latency_ms', r.latency_ms))
     FROM step_results r WHERE r.job_seq = j.seq),
    COALESCE((SELECT a.attempts FROM step_attempts a WHERE a.job_seq = j.seq AND a.step = ?1 AND a.fingerprint = ?5), 0)
FROM jobs j
WHERE j.status = 0 AND j.seq > ?3
  AND NOT EXISTS (SELECT 1 FROM step_results r WHERE r.job_seq = j.seq AND r.step = ?1)
  AND (SELECT COUNT(*) FROM step_results r
       WHERE r.job_seq = j.seq AND r.step IN (SELECT value FROM json_each(?2))) = json_array_length(?2)
ORDER BY j.seq
LIMIT ?4
