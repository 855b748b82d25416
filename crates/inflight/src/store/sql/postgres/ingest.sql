-- Jobs of run $1 (lines, ids, endpoints, bodies as arrays), skipping any whose line or id the run already has
-- (another ingester's, or an earlier pass's). Answers the lines it inserted.
INSERT INTO inflight.jobs (run, seq, id, endpoint, body)
SELECT $1, j.seq, j.id, j.endpoint, j.body
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS j (seq, id, endpoint, body)
ON CONFLICT DO NOTHING
RETURNING seq
