-- The results of jobs of run $1 that complete.sql just marked done, at their positions. ON CONFLICT DO NOTHING:
-- a job's result is never replaced (the caller checks that every row went in).
INSERT INTO inflight.results (run, seq, ord, status_code, request_id, response, sent_at, first_byte_at,
    finished_at, latency_ms, prompt_tokens, completion_tokens, finish_reason)
SELECT $1, r.seq, r.ord, r.status_code, r.request_id, r.response, r.sent_at, r.first_byte_at, r.finished_at,
    r.finished_at - r.sent_at, r.prompt_tokens, r.completion_tokens, r.finish_reason
FROM unnest($2::bigint[], $3::bigint[], $4::integer[], $5::text[], $6::text[], $7::bigint[], $8::bigint[],
            $9::bigint[], $10::bigint[], $11::bigint[], $12::text[])
    AS r (seq, ord, status_code, request_id, response, sent_at, first_byte_at, finished_at, prompt_tokens,
          completion_tokens, finish_reason)
ON CONFLICT DO NOTHING
