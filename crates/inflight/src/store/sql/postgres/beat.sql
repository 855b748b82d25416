-- Worker $2 of run $1 is alive now.
UPDATE inflight.workers SET last_beat = clock_timestamp() WHERE run = $1 AND id = $2
