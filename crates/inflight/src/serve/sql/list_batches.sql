-- A page of one owner's batches, newest first, after the batch ?2 (none: from the newest).
SELECT body FROM batches
WHERE owner = ?1
  AND (?2 IS NULL OR seq < (SELECT seq FROM batches WHERE id = ?2 AND owner = ?1))
ORDER BY seq DESC
LIMIT ?3
