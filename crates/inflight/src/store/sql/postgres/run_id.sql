-- The id of run $1, made on first use. An existing run is only read: the run's row is locked by every commit of
-- results (its next_ord), and opening a run, as `status` does, must not wait for one. DO UPDATE (a no-op) so
-- that RETURNING answers for a run another worker made at the same moment.
WITH existing AS (SELECT id FROM inflight.runs WHERE name = $1),
made AS (
    INSERT INTO inflight.runs (name) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM existing)
    ON CONFLICT (name) DO UPDATE SET name = excluded.name
    RETURNING id
)
SELECT id FROM existing
UNION ALL
SELECT id FROM made
