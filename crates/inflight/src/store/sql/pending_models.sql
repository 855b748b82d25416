SELECT DISTINCT json_extract(body, '$.model') FROM jobs WHERE status = 0 AND json_extract(body, '$.model') IS NOT NULL
