-- Migration 1: runs, their jobs, results and workers. One database holds any number of runs, each named by the
-- state URL's `run=NAME`; every row carries its run's id.
CREATE TABLE inflight.runs (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    -- The next result's position in the commit order. Its row is locked by each transaction that commits
    -- results until it commits, so positions are gap-free and become visible in order.
    next_ord   bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A run's metadata (its identity, ingest progress, …), as the SQLite state's `meta` table.
CREATE TABLE inflight.meta (
    run   bigint NOT NULL REFERENCES inflight.runs (id) ON DELETE CASCADE,
    key   text   NOT NULL,
    value text   NOT NULL,
    PRIMARY KEY (run, key)
);

-- One row per accepted job. state: 0 ready, 1 claimed, 2 done, 3 failed. seq is the input line number.
-- lease_token grows by one with each claim: a write about a claimed job names the token it holds, so a claim
-- that expired and was taken by another worker can no longer write (a fenced write).
CREATE TABLE inflight.jobs (
    run              bigint      NOT NULL REFERENCES inflight.runs (id) ON DELETE CASCADE,
    seq              bigint      NOT NULL,
    id               text        NOT NULL,
    endpoint         text        NOT NULL,
    body             text        NOT NULL,
    state            smallint    NOT NULL DEFAULT 0,
    lease_token      bigint      NOT NULL DEFAULT 0,
    worker           bigint,
    lease_expires_at timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    queued_at        timestamptz NOT NULL DEFAULT now(),
    -- A failed job's record (done jobs keep theirs in `results`). Times are the worker's Unix milliseconds.
    status_code      integer,
    response         text,
    error_code       text,
    error_message    text,
    step             text,
    sent_at          bigint,
    finished_at      bigint,
    PRIMARY KEY (run, seq),
    UNIQUE (run, id)
);
-- What claims scan: the unfinished jobs of a run in sequence order.
CREATE INDEX jobs_open ON inflight.jobs (run, seq) WHERE state IN (0, 1);
-- What release scans: a worker's claims.
CREATE INDEX jobs_worker ON inflight.jobs (run, worker) WHERE state = 1;

-- One row per succeeded job, written in the transaction that marks the job done; ord is its position in the
-- run's commit order (OUT.jsonl's line), assigned from runs.next_ord.
CREATE TABLE inflight.results (
    run               bigint  NOT NULL,
    seq               bigint  NOT NULL,
    ord               bigint  NOT NULL,
    status_code       integer NOT NULL,
    request_id        text,
    response          text    NOT NULL,
    sent_at           bigint  NOT NULL,
    first_byte_at     bigint,
    finished_at       bigint  NOT NULL,
    latency_ms        bigint  NOT NULL,
    prompt_tokens     bigint,
    completion_tokens bigint,
    finish_reason     text,
    PRIMARY KEY (run, seq),
    UNIQUE (run, ord),
    FOREIGN KEY (run, seq) REFERENCES inflight.jobs (run, seq) ON DELETE CASCADE
);

-- The processes that joined a run, for `status`; last_beat is the database's clock.
CREATE TABLE inflight.workers (
    id        bigserial   PRIMARY KEY,
    run       bigint      NOT NULL REFERENCES inflight.runs (id) ON DELETE CASCADE,
    host      text        NOT NULL,
    pid       integer     NOT NULL,
    servers   text[]      NOT NULL,
    joined_at timestamptz NOT NULL DEFAULT now(),
    last_beat timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_run ON inflight.workers (run, id);
