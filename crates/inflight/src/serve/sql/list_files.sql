-- A page of one owner's files, newest first, after the file ?2 (none: from the newest), of purpose ?3 (none: any).
SELECT body FROM files
WHERE owner = ?1
  AND (?3 IS NULL OR purpose = ?3)
  AND (?2 IS NULL OR seq < (SELECT seq FROM files WHERE id = ?2 AND owner = ?1))
ORDER BY seq DESC
LIMIT ?4
