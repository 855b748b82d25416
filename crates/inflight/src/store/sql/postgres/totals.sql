-- Run $1's results in sum, for the summary: answers cut by the length limit, prompt and completion tokens, the
-- first send and the last finish (Unix ms).
SELECT count(*) FILTER (WHERE finish_reason = 'length'),
       COALESCE(sum(prompt_tokens), 0)::bigint,
       COALESCE(sum(completion_tokens), 0)::bigint,
       min(sent_at),
       max(finished_at)
FROM inflight.results WHERE run = $1
