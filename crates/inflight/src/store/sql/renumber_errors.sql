-- After failed jobs are reopened, the errors file is rebuilt: give the remaining error records dense positions.
WITH ordered AS (
    SELECT line, ROW_NUMBER() OVER (ORDER BY out_ord) - 1 AS ord FROM bad_lines
)
UPDATE bad_lines SET out_ord = (SELECT ord FROM ordered WHERE ordered.line = bad_lines.line)
