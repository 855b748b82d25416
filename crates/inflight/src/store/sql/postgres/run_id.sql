-- The id of run $1, made on first use. DO UPDATE (a no-op) so that RETURNING answers for an existing run too.
INSERT INTO inflight.runs (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET name = excluded.name
RETURNING id
