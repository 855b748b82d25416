-- Results whose step is gone from the workflow or whose fingerprint changed (?1: {name: fingerprint}).
DELETE FROM step_results
WHERE NOT EXISTS (SELECT 1 FROM json_each(?1) WHERE json_each.key = step AND json_each.value = fingerprint)
