-- Migration 1: the whole state of a run.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per accepted job. status: 0 pending, 2 done, 3 failed. Times are Unix milliseconds.
-- out_ord is the job's line index in OUT.jsonl (done) or OUT.errors.jsonl (failed), assigned at commit.
CREATE TABLE jobs (
    seq               INTEGER PRIMARY KEY,
    line              INTEGER NOT NULL,
    id                TEXT    NOT NULL UNIQUE,
    endpoint          TEXT    NOT NULL,
    body              TEXT    NOT NULL,
    status            INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    queued_at         INTEGER NOT NULL,
    sent_at           INTEGER,
    first_byte_at     INTEGER,
    finished_at       INTEGER,
    latency_ms        INTEGER,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    finish_reason     TEXT,
    status_code       INTEGER,
    request_id        TEXT,
    response          TEXT,
    error_code        TEXT,
    error_message     TEXT,
    out_ord           INTEGER
);
CREATE INDEX jobs_pending ON jobs (seq) WHERE status = 0;
CREATE UNIQUE INDEX jobs_done_ord ON jobs (out_ord) WHERE status = 2;
CREATE UNIQUE INDEX jobs_failed_ord ON jobs (out_ord) WHERE status = 3;

-- Input lines that did not become jobs; they share the errors file's order with failed jobs.
CREATE TABLE bad_lines (
    line    INTEGER PRIMARY KEY,
    code    TEXT    NOT NULL,
    message TEXT    NOT NULL,
    out_ord INTEGER NOT NULL
);
CREATE INDEX bad_lines_ord ON bad_lines (out_ord);
