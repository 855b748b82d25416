//! Workflow state: one result per (job, step), reused while the step's fingerprint matches, and a job done in
//! the same transaction as its last step.
//!
//! The store knows nothing of templates or models: a step is a name, a position and a fingerprint. What a
//! workflow is lives in `crate::workflow`.

use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};
use serde_json::{Map, Value};

use super::{now_ms, DoneRow, PendingJob, Store, StoreError};

/// A finished step to record.
#[derive(Debug, Clone)]
pub struct StepDone {
    /// The job's store sequence number.
    pub seq: i64,
    /// The step's name.
    pub step: String,
    /// The step's position in the workflow.
    pub ord: usize,
    /// The step's fingerprint.
    pub fingerprint: String,
    /// The step's output as JSON text (a string for text steps).
    pub output: String,
    /// The server's answer.
    pub response: String,
    /// Attempts spent.
    pub attempts: u32,
    /// Answers refused by the step's schema before this one.
    pub invalid: u32,
    /// Prompt tokens reported by the server.
    pub prompt_tokens: Option<i64>,
    /// Completion tokens reported by the server.
    pub completion_tokens: Option<i64>,
    /// When the answered attempt was sent (Unix ms).
    pub sent_ms: i64,
    /// When it was answered (Unix ms).
    pub finished_ms: i64,
    /// How many steps the workflow has: the job is done once it has this many results.
    pub steps_total: usize,
}

/// One step of one job whose inputs are all finished.
#[derive(Debug, Clone)]
pub struct ReadyUnit {
    /// The job's store sequence number.
    pub seq: i64,
    /// The job's id.
    pub id: String,
    /// The job's input line.
    pub line: i64,
    /// The input line's fields (JSON object text).
    pub fields: String,
    /// The job's finished steps, `{name: {output, latency_ms}}` (JSON object text).
    pub done: String,
    /// Attempts this step has spent (in earlier sessions too) under its current fingerprint.
    pub attempts: u32,
}

/// Per-step totals, for the summary and `inflight status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StepCount {
    /// The step's name.
    pub step: String,
    /// Results recorded.
    pub done: u64,
    /// Answers refused by the step's schema (each one retried with another seed).
    pub invalid: u64,
    /// Jobs that failed in this step.
    pub failed: u64,
}

/// Records `s` in `tx`; when it completes its job, marks the job done at output position `out_ord` and returns
/// the job's output row. A step recorded twice (sent again after a crash) is ignored.
pub(super) fn record_step(tx: &Transaction, s: &StepDone, out_ord: i64) -> Result<Option<DoneRow>, StoreError> {
    if !insert_step(tx, s)? {
        return Ok(None);
    }
    complete(tx, s.seq, out_ord, s.steps_total)
}

/// Inserts `s` unless its job has that step already; whether it did.
pub(super) fn insert_step(tx: &Transaction, s: &StepDone) -> Result<bool, StoreError> {
    let inserted = tx.prepare_cached(include_str!("sql/insert_step.sql"))?.execute(params![
        s.seq,
        s.step,
        s.ord as i64,
        s.fingerprint,
        s.output,
        s.response,
        s.attempts,
        s.invalid,
        s.prompt_tokens,
        s.completion_tokens,
        s.sent_ms,
        s.finished_ms,
    ])?;
    Ok(inserted > 0)
}

fn complete(tx: &Transaction, seq: i64, out_ord: i64, steps: usize) -> Result<Option<DoneRow>, StoreError> {
    let mut stmt = tx.prepare_cached(include_str!("sql/complete_job.sql"))?;
    let row = stmt
        .query_row(params![seq, out_ord, steps as i64], |r| {
            Ok(DoneRow {
                seq,
                id: r.get(0)?,
                status_code: 200,
                request_id: None,
                response: r.get(1)?,
                latency_ms: r.get(2)?,
            })
        })
        .optional()?;
    Ok(row)
}

impl Store {
    /// Up to `limit` jobs after `after_seq` whose step `step` (with `fingerprint`) can run, given the steps it
    /// reads (`deps`).
    pub fn ready_units(
        &self,
        step: &str,
        fingerprint: &str,
        deps: &[&str],
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ReadyUnit>, StoreError> {
        let deps = Value::from(deps.to_vec()).to_string();
        let mut stmt = self.conn.prepare_cached(include_str!("sql/ready_units.sql"))?;
        let rows = stmt.query_map(params![step, deps, after_seq, limit as i64, fingerprint], |r| {
            Ok(ReadyUnit {
                seq: r.get(0)?,
                id: r.get(1)?,
                line: r.get(2)?,
                fields: r.get(3)?,
                done: r.get(4)?,
                attempts: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many jobs can run step `step` (given the steps it reads), counting no further than `limit`.
    pub fn count_ready(&self, step: &str, deps: &[&str], limit: usize) -> Result<usize, StoreError> {
        let deps = Value::from(deps.to_vec()).to_string();
        let mut stmt = self.conn.prepare_cached(include_str!("sql/ready_count.sql"))?;
        let n: i64 = stmt.query_row(params![step, deps, limit as i64], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Per-step totals, in no particular order.
    pub fn step_counts(&self) -> Result<Vec<StepCount>, StoreError> {
        let mut stmt = self.conn.prepare_cached(include_str!("sql/step_counts.sql"))?;
        let rows = stmt.query_map([], |r| {
            Ok(StepCount {
                step: r.get(0)?,
                done: r.get::<_, i64>(1)? as u64,
                invalid: r.get::<_, i64>(2)? as u64,
                failed: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Puts jobs claimed from a shared run into this (fresh) state under the shared run's sequence numbers, so
    /// that what the state records of them names the same jobs there (a workflow worker's round).
    pub fn insert_claimed(&mut self, jobs: &[PendingJob]) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(include_str!("sql/insert_claimed_job.sql"))?;
            let queued_at = now_ms();
            for j in jobs {
                insert.execute(params![j.seq, j.line, j.id, j.endpoint.code(), j.body, queued_at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records steps a shared run kept for claimed jobs (by a worker that held them before), before a round
    /// runs the rest; returns the output rows of the jobs they finish (every step was kept).
    pub fn insert_steps(&mut self, steps: &[StepDone]) -> Result<Vec<DoneRow>, StoreError> {
        let mut next = self.next_done_ord()?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut done = Vec::new();
        for s in steps {
            if let Some(row) = record_step(&tx, s, next)? {
                next += 1;
                done.push(row);
            }
        }
        tx.commit()?;
        Ok(done)
    }

    /// Brings the state in line with the workflow's `steps` (name, fingerprint; in order): results of steps that
    /// changed or are gone are dropped; if anything changed, every finished job is reopened (its output line
    /// must be rebuilt) along with the jobs that failed in a changed step, and jobs whose results are all still
    /// valid are finished again at once. Returns whether anything changed (the output files must be rebuilt).
    pub fn apply_workflow(&mut self, steps: &[(String, String)]) -> Result<bool, StoreError> {
        let current: Map<String, Value> = steps.iter().map(|(n, f)| (n.clone(), Value::from(f.as_str()))).collect();
        let current = Value::Object(current).to_string();
        let before = self.meta("workflow_steps")?;
        let changed: Vec<&str> =
            match before.as_deref().and_then(|b| serde_json::from_str::<Map<String, Value>>(b).ok()) {
                Some(old) => steps
                    .iter()
                    .filter(|(n, f)| old.get(n).and_then(Value::as_str) != Some(f))
                    .map(|(n, _)| n.as_str())
                    .collect(),
                None => Vec::new(),
            };
        let gone = before.is_some() && before.as_deref() != Some(current.as_str());
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('workflow_steps', ?1)", [&current])?;
        if !gone {
            tx.commit()?;
            return Ok(false);
        }
        tx.execute(include_str!("sql/drop_stale_steps.sql"), [&current])?;
        tx.execute(include_str!("sql/reopen_for_workflow.sql"), [Value::from(changed).to_string()])?;
        let finished: Vec<i64> = tx
            .prepare(include_str!("sql/complete_jobs.sql"))?
            .query_map([steps.len() as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        tx.execute_batch(include_str!("sql/renumber_outputs.sql"))?;
        let mut next: i64 =
            tx.query_row("SELECT COALESCE(MAX(out_ord), -1) + 1 FROM jobs WHERE status = 2", [], |r| r.get(0))?;
        for seq in finished {
            if complete(&tx, seq, next, steps.len())?.is_some() {
                next += 1;
            }
        }
        tx.commit()?;
        Ok(true)
    }
}
