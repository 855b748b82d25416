-- The workers of run $1 in the order they joined, with the milliseconds since each one's last beat.
SELECT id, host, pid, servers,
       (extract(epoch FROM clock_timestamp() - last_beat) * 1000)::bigint
FROM inflight.workers WHERE run = $1 ORDER BY id
