-- The line of the job that holds id ?1 (to tell a job already ingested from a duplicate id).
SELECT line FROM jobs WHERE id = ?1
