-- After jobs are reopened the output files are rebuilt: give the remaining records dense positions, in their
-- old order. Through negative positions, since the unique indexes are checked row by row.
CREATE TEMP TABLE IF NOT EXISTS renumber (kind TEXT NOT NULL, key INTEGER NOT NULL, n INTEGER NOT NULL);
DELETE FROM temp.renumber;
INSERT INTO temp.renumber SELECT kind, key, ROW_NUMBER() OVER (ORDER BY out_ord) - 1 FROM (
    SELECT 'j' AS kind, seq AS key, out_ord FROM jobs WHERE status = 3
    UNION ALL
    SELECT 'b', line, out_ord FROM bad_lines
);
INSERT INTO temp.renumber SELECT 'd', seq, ROW_NUMBER() OVER (ORDER BY out_ord) - 1 FROM jobs WHERE status = 2;
UPDATE jobs SET out_ord = -1 - (SELECT n FROM temp.renumber WHERE kind = 'd' AND key = seq) WHERE status = 2;
UPDATE jobs SET out_ord = -1 - (SELECT n FROM temp.renumber WHERE kind = 'j' AND key = seq) WHERE status = 3;
UPDATE jobs SET out_ord = -1 - out_ord WHERE status IN (2, 3);
UPDATE bad_lines SET out_ord = (SELECT n FROM temp.renumber WHERE kind = 'b' AND key = line);
DELETE FROM temp.renumber;
