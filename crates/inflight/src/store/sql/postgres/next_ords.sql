-- Takes $2 positions in run $1's commit order, answering the first. The row stays locked until the transaction
-- commits, so the next committer's positions follow these and are visible only after them.
UPDATE inflight.runs SET next_ord = next_ord + $2 WHERE id = $1 RETURNING next_ord - $2
