-- Migration 2: the finished workflow steps of a run's jobs, written by the worker that holds the job's claim
-- (fenced by its token), so that a worker that claims the job again goes on from them.
CREATE TABLE inflight.step_results (
    run               bigint  NOT NULL,
    seq               bigint  NOT NULL,
    step              text    NOT NULL,
    ord               integer NOT NULL,
    fingerprint       text    NOT NULL,
    output            text    NOT NULL,
    response          text    NOT NULL,
    attempts          integer NOT NULL,
    invalid           integer NOT NULL,
    prompt_tokens     bigint,
    completion_tokens bigint,
    sent_at           bigint  NOT NULL,
    finished_at       bigint  NOT NULL,
    PRIMARY KEY (run, seq, step),
    FOREIGN KEY (run, seq) REFERENCES inflight.jobs (run, seq) ON DELETE CASCADE
);
