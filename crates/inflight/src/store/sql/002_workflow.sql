-- Migration 2: workflows. A workflow job is a row of `jobs` (its body is the input line's fields) with one row
-- here per finished step; the job is done, in the same transaction, when every step of the workflow is.
CREATE TABLE step_results (
    job_seq           INTEGER NOT NULL,
    step              TEXT    NOT NULL,
    ord               INTEGER NOT NULL, -- the step's position in the workflow, for the output line's order
    fingerprint       TEXT    NOT NULL, -- the step's fingerprint when it ran: reused while it matches
    output            TEXT    NOT NULL, -- JSON: the answer text as a string, or the parsed value for `output: json`
    response          TEXT    NOT NULL, -- the server's whole answer
    attempts          INTEGER NOT NULL,
    invalid           INTEGER NOT NULL, -- answers refused by the step's JSON Schema before this one
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    sent_at           INTEGER NOT NULL,
    finished_at       INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    PRIMARY KEY (job_seq, step)
) WITHOUT ROWID;

-- The step a failed workflow job failed in (NULL for plain runs).
ALTER TABLE jobs ADD COLUMN step TEXT;
