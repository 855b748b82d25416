-- The jobs of run $1 that hold any of the lines $2 or ids $3 (to tell a job already ingested from a duplicate).
SELECT seq, id FROM inflight.jobs WHERE run = $1 AND (seq = ANY ($2::bigint[]) OR id = ANY ($3::text[]))
