-- Migration 3: attempts of unfinished workflow steps, committed before each is sent (like `jobs.attempts`), so
-- a resumed workflow does not give a step a fresh budget. Counted only while the step's fingerprint matches:
-- an edited step starts again.
CREATE TABLE step_attempts (
    job_seq     INTEGER NOT NULL,
    step        TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    last_error  TEXT,
    PRIMARY KEY (job_seq, step)
) WITHOUT ROWID;
