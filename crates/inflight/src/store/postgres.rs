//! The store contract ([`WorkStore`]) in PostgreSQL: any number of processes, on any number of machines, share
//! one run. Claims are leases in the database (an expiry by the database's clock and a token per claim), taken
//! with `FOR UPDATE SKIP LOCKED` in one statement; every write about a claimed job is fenced by its token.
//!
//! The client is the blocking `postgres` crate: the store is blocking (the SQLite store is, and its writer is a
//! thread), so a handle lives on a thread of its own, never on the async runtime (whose threads `postgres`'s own
//! runtime must not block). Statements are prepared once per connection. SQL lives in `sql/postgres/`, and
//! migrations are applied at open under an advisory lock, so workers starting at the same moment migrate once.

use std::time::Duration;

use postgres::{Client, GenericClient, NoTls, Statement};

use super::contract::{
    Claimed, Committed, Fence, Ingested, Lease, LeaseToken, NewJob, WorkCounts, WorkStore, WorkerId, WorkerInfo,
    WorkerRow,
};
use super::{
    BadLineRow, Completion, Counts, DoneRow, FailedAnswer, FailedRow, Failure, PendingJob, PgUrl, StepDone, StoreError,
};
use crate::job::Endpoint;

const BOOTSTRAP: &str = include_str!("sql/postgres/000_bootstrap.sql");
const MIGRATIONS: &[&str] = &[include_str!("sql/postgres/001_init.sql"), include_str!("sql/postgres/002_steps.sql")];
/// How long a transaction of this worker may sit idle before the server ends it (see [`PgWork::open`]).
const STALLED_TRANSACTION: Duration = Duration::from_secs(5);
/// The advisory lock migrations take (any fixed number: it names inflight's migrations in the database).
const MIGRATION_LOCK: i64 = 0x696e_666c_6967_6874; // "inflight"

/// A run's state in PostgreSQL: one connection, on the run the URL names.
pub struct PgWork {
    client: Client,
    url: PgUrl,
    run: i64,
    sql: Statements,
}

/// Every statement, prepared once per connection.
struct Statements {
    ingest: Statement,
    ingest_present: Statement,
    claim: Statement,
    renew: Statement,
    record_attempts: Statement,
    record_steps: Statement,
    complete: Statement,
    next_ords: Statement,
    insert_results: Statement,
    fail: Statement,
    release: Statement,
    counts: Statement,
    results_from: Statement,
    meta: Statement,
    set_meta: Statement,
    register_worker: Statement,
    beat: Statement,
    workers: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Statements, StoreError> {
        let mut p = |sql: &str| client.prepare(sql);
        Ok(Statements {
            ingest: p(include_str!("sql/postgres/ingest.sql"))?,
            ingest_present: p(include_str!("sql/postgres/ingest_present.sql"))?,
            claim: p(include_str!("sql/postgres/claim.sql"))?,
            renew: p(include_str!("sql/postgres/renew.sql"))?,
            record_attempts: p(include_str!("sql/postgres/record_attempts.sql"))?,
            record_steps: p(include_str!("sql/postgres/record_steps.sql"))?,
            complete: p(include_str!("sql/postgres/complete.sql"))?,
            next_ords: p(include_str!("sql/postgres/next_ords.sql"))?,
            insert_results: p(include_str!("sql/postgres/insert_results.sql"))?,
            fail: p(include_str!("sql/postgres/fail.sql"))?,
            release: p(include_str!("sql/postgres/release.sql"))?,
            counts: p(include_str!("sql/postgres/counts.sql"))?,
            results_from: p(include_str!("sql/postgres/results_from.sql"))?,
            meta: p(include_str!("sql/postgres/meta.sql"))?,
            set_meta: p(include_str!("sql/postgres/set_meta.sql"))?,
            register_worker: p(include_str!("sql/postgres/register_worker.sql"))?,
            beat: p(include_str!("sql/postgres/beat.sql"))?,
            workers: p(include_str!("sql/postgres/workers.sql"))?,
        })
    }
}

impl PgWork {
    /// Connects to the database `url` names, applies the migrations it lacks, and opens the run it names
    /// (making it on first use).
    pub fn open(url: &PgUrl) -> Result<PgWork, StoreError> {
        let mut client = url.config().connect(NoTls)?;
        // A worker stopped inside a transaction (SIGSTOP, a stalled machine) holds its rows' locks, and the run's
        // row that orders commits: every other worker would wait for it. Its transactions are a few statements
        // sent back to back, so one idle this long is a stalled worker's: the server ends its session (it
        // reconnects and tries again when it wakes; its writes are fenced).
        client
            .batch_execute(&format!("SET idle_in_transaction_session_timeout = {}", STALLED_TRANSACTION.as_millis()))?;
        migrate(&mut client)?;
        let run = client.query_one(include_str!("sql/postgres/run_id.sql"), &[&url.run()])?.get(0);
        let sql = Statements::prepare(&mut client)?;
        Ok(PgWork { client, url: url.clone(), run, sql })
    }

    /// The state URL (shown with its password redacted).
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// The run's counts for its summary and `status`: jobs by state (claimed ones are pending), bad lines, and
    /// the results' sums.
    pub fn totals(&mut self) -> Result<Counts, StoreError> {
        let work = self.counts()?;
        let r = self.client.query_one(include_str!("sql/postgres/totals.sql"), &[&self.run])?;
        let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
        Ok(Counts {
            pending: work.ready + work.claimed,
            done: work.done,
            failed: work.failed,
            bad_lines: self.bad_lines()?.len() as u64,
            length_cut: n(0),
            prompt_tokens: n(1),
            completion_tokens: n(2),
            first_sent_ms: r.get(3),
            last_finished_ms: r.get(4),
        })
    }

    /// The first `n` unfinished jobs (ready or claimed) in sequence order, without claiming them.
    pub fn unfinished(&mut self, n: usize) -> Result<Vec<PendingJob>, StoreError> {
        let rows = self.client.query(include_str!("sql/postgres/unfinished.sql"), &[&self.run, &(n as i64)])?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                Ok(PendingJob {
                    seq,
                    id: r.get(1),
                    endpoint: endpoint_of(&r.get::<_, String>(2))?,
                    body: r.get(3),
                    attempts: r.get::<_, i32>(4).max(0) as u32,
                    line: seq,
                })
            })
            .collect()
    }

    /// Every result's latency (ms), for the summary's percentiles.
    pub fn latency_histogram(&mut self) -> Result<hdrhistogram::Histogram<u64>, StoreError> {
        let mut h = super::empty_latency_histogram();
        for row in self.client.query("SELECT latency_ms FROM inflight.results WHERE run = $1", &[&self.run])? {
            h.saturating_record(row.get::<_, i64>(0).max(0) as u64);
        }
        Ok(h)
    }

    /// The failed jobs' error records, in input order.
    pub fn failed_rows(&mut self) -> Result<Vec<FailedRow>, StoreError> {
        let rows = self.client.query(include_str!("sql/postgres/failed_rows.sql"), &[&self.run])?;
        Ok(rows
            .iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let answer = r.get::<_, Option<i32>>(2).map(|status| FailedAnswer {
                    status_code: status.into(),
                    request_id: None,
                    body: r.get(3),
                });
                FailedRow {
                    seq,
                    line: seq,
                    id: r.get(1),
                    answer,
                    code: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    message: r.get::<_, Option<String>>(5).unwrap_or_default(),
                    step: r.get(6),
                }
            })
            .collect())
    }

    /// Records input lines that did not become jobs (kept as metadata, one key a line: a line recorded twice,
    /// by two ingesters, is one record).
    pub fn add_bad_lines(&mut self, bad: &[BadLineRow]) -> Result<(), StoreError> {
        for b in bad {
            let value = serde_json::json!({"code": b.code, "message": b.message, "custom_id": b.custom_id});
            self.set_meta(&format!("{BAD_LINE}{:012}", b.line), &value.to_string())?;
        }
        Ok(())
    }

    /// The input lines that did not become jobs, in input order.
    pub fn bad_lines(&mut self) -> Result<Vec<BadLineRow>, StoreError> {
        let rows = self.client.query(include_str!("sql/postgres/meta_prefix.sql"), &[&self.run, &BAD_LINE])?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let key: String = r.get(0);
                let line = key.strip_prefix(BAD_LINE)?.parse().ok()?;
                let v: serde_json::Value = serde_json::from_str(&r.get::<_, String>(1)).ok()?;
                Some(BadLineRow {
                    line,
                    code: v["code"].as_str().unwrap_or_default().to_owned(),
                    message: v["message"].as_str().unwrap_or_default().to_owned(),
                    custom_id: v["custom_id"].as_str().map(str::to_owned),
                })
            })
            .collect())
    }

    /// Brings the planner's statistics of the jobs table up to date (after an ingest). The tables hold every run
    /// of the database and every statement names its run as a parameter: a plan made for a new run's id from
    /// statistics gathered before it had rows expects none, and scans the whole run for each result paged
    /// (measured: 3.9 s against 12 ms for a page of results; 447 jobs/s for four workers instead of ~2,700). A
    /// role that may not analyze the table gets a warning from the server, not an error.
    pub fn analyze(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("ANALYZE inflight.jobs")?;
        Ok(())
    }

    /// Puts every failed job back to ready with a fresh budget of attempts (`--retry-failed`). Returns how many.
    pub fn reopen_failed(&mut self) -> Result<u64, StoreError> {
        Ok(self.client.execute(include_str!("sql/postgres/reopen_failed.sql"), &[&self.run])?)
    }

    /// Deletes the run (jobs, results, workers, metadata) and begins it anew under the same name (`--restart`).
    pub fn reset(&mut self) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        tx.execute("DELETE FROM inflight.runs WHERE id = $1", &[&self.run])?;
        self.run = tx.query_one(include_str!("sql/postgres/run_id.sql"), &[&self.url.run()])?.get(0);
        tx.commit()?;
        Ok(())
    }
}

/// The metadata key prefix of a bad line's record (followed by the zero-padded line number, so keys sort by line).
const BAD_LINE: &str = "bad_line:";

/// Brings the database's schema to this version's, once even when several workers start at the same moment. A
/// database already at this version is only read: a worker's role may be allowed to read and write the tables
/// without being allowed to create anything.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    if schema_version(client)? == MIGRATIONS.len() {
        return Ok(());
    }
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(BOOTSTRAP)?;
    let version = schema_version(&mut tx)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Incompatible(format!(
            "the database was migrated by a newer inflight (schema {version}, this one knows {})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO inflight.migrations (version) VALUES ($1)", &[&(i as i32 + 1)])?;
    }
    tx.commit()?;
    Ok(())
}

/// The migrations the database has had (0 before the first).
fn schema_version(client: &mut impl GenericClient) -> Result<usize, StoreError> {
    let present: bool = client.query_one("SELECT to_regclass('inflight.migrations') IS NOT NULL", &[])?.get(0);
    if !present {
        return Ok(0);
    }
    let version: i32 = client.query_one("SELECT COALESCE(MAX(version), 0) FROM inflight.migrations", &[])?.get(0);
    Ok(version.max(0) as usize)
}

fn endpoint_of(code: &str) -> Result<Endpoint, StoreError> {
    Endpoint::from_code(code)
        .ok_or_else(|| StoreError::Incompatible(format!("unknown endpoint {code:?} in the database")))
}

fn millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Fences in the order asked, from the set of jobs a fenced statement wrote.
fn fences(asked: impl Iterator<Item = i64>, written: &std::collections::HashSet<i64>) -> Vec<Fence> {
    asked.map(|seq| if written.contains(&seq) { Fence::Recorded } else { Fence::Stale }).collect()
}

impl WorkStore for PgWork {
    fn try_clone(&self) -> Result<Box<dyn WorkStore>, StoreError> {
        Ok(Box::new(PgWork::open(&self.url)?))
    }

    fn ingest(&mut self, jobs: &[NewJob]) -> Result<Ingested, StoreError> {
        // In line order, so that two ingesters of the same input take the rows' locks in the same order.
        let mut jobs: Vec<&NewJob> = jobs.iter().collect();
        jobs.sort_by_key(|j| j.line);
        let lines: Vec<i64> = jobs.iter().map(|j| j.line as i64).collect();
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let endpoints: Vec<&str> = jobs.iter().map(|j| j.endpoint.code()).collect();
        let bodies: Vec<&str> = jobs.iter().map(|j| j.body.as_str()).collect();
        let mut tx = self.client.transaction()?;
        let inserted: std::collections::HashSet<i64> = tx
            .query(&self.sql.ingest, &[&self.run, &lines, &ids, &endpoints, &bodies])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut report = Ingested { inserted: inserted.len() as u64, ..Ingested::default() };
        if inserted.len() < jobs.len() {
            let held: std::collections::HashMap<i64, String> = tx
                .query(&self.sql.ingest_present, &[&self.run, &lines, &ids])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for job in jobs.iter().filter(|j| !inserted.contains(&(j.line as i64))) {
                report.not_inserted(job.line, held.get(&(job.line as i64)) == Some(&job.id));
            }
        }
        tx.commit()?;
        Ok(report)
    }

    fn claim(&mut self, worker: WorkerId, limit: usize, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
        let rows = self.client.query(&self.sql.claim, &[&self.run, &worker.0, &(limit as i64), &millis(lease)])?;
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            let endpoint = endpoint_of(&r.get::<_, String>(2))?;
            let seq: i64 = r.get(0);
            claimed.push(Claimed {
                lease: Lease { seq, token: LeaseToken(r.get(4)) },
                id: r.get(1),
                line: seq,
                endpoint,
                body: r.get(3),
                attempts: r.get::<_, i32>(5).max(0) as u32,
            });
        }
        // The statement's row order is not the subquery's: hand them out in sequence order.
        claimed.sort_by_key(|c| c.lease.seq);
        Ok(claimed)
    }

    fn renew(&mut self, leases: &[Lease], lease: Duration) -> Result<Vec<Lease>, StoreError> {
        let seqs: Vec<i64> = leases.iter().map(|l| l.seq).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token.0).collect();
        let rows = self.client.query(&self.sql.renew, &[&self.run, &seqs, &tokens, &millis(lease)])?;
        let renewed: std::collections::HashSet<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(leases.iter().copied().filter(|l| renewed.contains(&(l.seq, l.token.0))).collect())
    }

    fn record_attempts(&mut self, attempts: &[(Lease, u32)]) -> Result<Vec<Fence>, StoreError> {
        let seqs: Vec<i64> = attempts.iter().map(|(l, _)| l.seq).collect();
        let tokens: Vec<i64> = attempts.iter().map(|(l, _)| l.token.0).collect();
        let counts: Vec<i32> = attempts.iter().map(|(_, n)| *n as i32).collect();
        let rows = self.client.query(&self.sql.record_attempts, &[&self.run, &seqs, &tokens, &counts])?;
        let written: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        Ok(fences(seqs.iter().copied(), &written))
    }

    fn record_steps(&mut self, steps: &[(LeaseToken, StepDone)]) -> Result<Vec<Fence>, StoreError> {
        let column = |f: fn(&StepDone) -> String| steps.iter().map(|(_, s)| f(s)).collect::<Vec<String>>();
        let seqs: Vec<i64> = steps.iter().map(|(_, s)| s.seq).collect();
        let tokens: Vec<i64> = steps.iter().map(|(t, _)| t.0).collect();
        let ords: Vec<i32> = steps.iter().map(|(_, s)| s.ord as i32).collect();
        let attempts: Vec<i32> = steps.iter().map(|(_, s)| s.attempts as i32).collect();
        let invalid: Vec<i32> = steps.iter().map(|(_, s)| s.invalid as i32).collect();
        let prompt: Vec<Option<i64>> = steps.iter().map(|(_, s)| s.prompt_tokens).collect();
        let completion: Vec<Option<i64>> = steps.iter().map(|(_, s)| s.completion_tokens).collect();
        let sent: Vec<i64> = steps.iter().map(|(_, s)| s.sent_ms).collect();
        let finished: Vec<i64> = steps.iter().map(|(_, s)| s.finished_ms).collect();
        let (names, fingerprints) = (column(|s| s.step.clone()), column(|s| s.fingerprint.clone()));
        let (outputs, responses) = (column(|s| s.output.clone()), column(|s| s.response.clone()));
        let rows = self.client.query(
            &self.sql.record_steps,
            &[
                &self.run,
                &seqs,
                &tokens,
                &names,
                &ords,
                &fingerprints,
                &outputs,
                &responses,
                &attempts,
                &invalid,
                &prompt,
                &completion,
                &sent,
                &finished,
            ],
        )?;
        let held: std::collections::HashSet<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let fence = |(_, s): &(LeaseToken, StepDone)| {
            if held.contains(&(s.seq, s.step.clone())) {
                Fence::Recorded
            } else {
                Fence::Stale
            }
        };
        Ok(steps.iter().map(fence).collect())
    }

    fn steps_of(&mut self, seqs: &[i64]) -> Result<Vec<StepDone>, StoreError> {
        let rows = self.client.query(include_str!("sql/postgres/steps_of.sql"), &[&self.run, &seqs])?;
        let step = |r: &postgres::Row| StepDone {
            seq: r.get(0),
            step: r.get(1),
            ord: r.get::<_, i32>(2).max(0) as usize,
            fingerprint: r.get(3),
            output: r.get(4),
            response: r.get(5),
            attempts: r.get::<_, i32>(6).max(0) as u32,
            invalid: r.get::<_, i32>(7).max(0) as u32,
            prompt_tokens: r.get(8),
            completion_tokens: r.get(9),
            sent_ms: r.get(10),
            finished_ms: r.get(11),
            steps_total: 0,
        };
        Ok(rows.iter().map(step).collect())
    }

    fn complete(&mut self, done: &[(LeaseToken, Completion)]) -> Result<Vec<Fence>, StoreError> {
        let seqs: Vec<i64> = done.iter().map(|(_, c)| c.seq).collect();
        let tokens: Vec<i64> = done.iter().map(|(t, _)| t.0).collect();
        let attempts: Vec<i32> = done.iter().map(|(_, c)| c.attempts as i32).collect();
        let mut tx = self.client.transaction()?;
        let written: std::collections::HashSet<i64> =
            tx.query(&self.sql.complete, &[&self.run, &seqs, &tokens, &attempts])?.iter().map(|r| r.get(0)).collect();
        let fences = fences(seqs.iter().copied(), &written);
        // The won jobs' results, in the order given, at the next positions of the commit order.
        let won: Vec<&Completion> =
            done.iter().zip(&fences).filter(|(_, f)| **f == Fence::Recorded).map(|((_, c), _)| c).collect();
        if !won.is_empty() {
            let n = won.len() as i64;
            let first: i64 = tx.query_one(&self.sql.next_ords, &[&self.run, &n])?.get(0);
            let seqs: Vec<i64> = won.iter().map(|c| c.seq).collect();
            let ords: Vec<i64> = (first..first + n).collect();
            let status: Vec<i32> = won.iter().map(|c| i32::from(c.status_code)).collect();
            let request_ids: Vec<&str> = won.iter().map(|c| c.request_id.as_str()).collect();
            let responses: Vec<&str> = won.iter().map(|c| c.response.as_str()).collect();
            let sent: Vec<i64> = won.iter().map(|c| c.sent_ms).collect();
            let first_byte: Vec<Option<i64>> = won.iter().map(|c| c.first_byte_ms).collect();
            let finished: Vec<i64> = won.iter().map(|c| c.finished_ms).collect();
            let prompt: Vec<Option<i64>> = won.iter().map(|c| c.prompt_tokens).collect();
            let completion: Vec<Option<i64>> = won.iter().map(|c| c.completion_tokens).collect();
            let reasons: Vec<Option<&str>> = won.iter().map(|c| c.finish_reason.as_deref()).collect();
            let inserted = tx.execute(
                &self.sql.insert_results,
                &[
                    &self.run,
                    &seqs,
                    &ords,
                    &status,
                    &request_ids,
                    &responses,
                    &sent,
                    &first_byte,
                    &finished,
                    &prompt,
                    &completion,
                    &reasons,
                ],
            )?;
            if inserted != won.len() as u64 {
                // A claimed job already had a result: the database was changed by hand. Roll back rather
                // than leave a gap in the commit order or a job answered twice.
                return Err(StoreError::Incompatible(format!(
                    "{} of {} jobs claimed in the database already had a result",
                    won.len() as u64 - inserted,
                    won.len()
                )));
            }
        }
        tx.commit()?;
        Ok(fences)
    }

    fn fail(&mut self, failed: &[(LeaseToken, Failure)]) -> Result<Vec<Fence>, StoreError> {
        let seqs: Vec<i64> = failed.iter().map(|(_, f)| f.seq).collect();
        let tokens: Vec<i64> = failed.iter().map(|(t, _)| t.0).collect();
        let attempts: Vec<i32> = failed.iter().map(|(_, f)| f.attempts as i32).collect();
        let status: Vec<Option<i32>> = failed.iter().map(|(_, f)| f.status_code.map(i32::from)).collect();
        let responses: Vec<Option<&str>> = failed.iter().map(|(_, f)| f.response.as_deref()).collect();
        let codes: Vec<&str> = failed.iter().map(|(_, f)| f.code.as_str()).collect();
        let messages: Vec<&str> = failed.iter().map(|(_, f)| f.message.as_str()).collect();
        let steps: Vec<Option<&str>> = failed.iter().map(|(_, f)| f.step.as_deref()).collect();
        let sent: Vec<Option<i64>> = failed.iter().map(|(_, f)| f.sent_ms).collect();
        let finished: Vec<i64> = failed.iter().map(|(_, f)| f.finished_ms).collect();
        let written: std::collections::HashSet<i64> = self
            .client
            .query(
                &self.sql.fail,
                &[
                    &self.run, &seqs, &tokens, &attempts, &status, &responses, &codes, &messages, &steps, &sent,
                    &finished,
                ],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(fences(seqs.iter().copied(), &written))
    }

    fn release(&mut self, worker: WorkerId) -> Result<u64, StoreError> {
        Ok(self.client.execute(&self.sql.release, &[&self.run, &worker.0])?)
    }

    fn counts(&mut self) -> Result<WorkCounts, StoreError> {
        let r = self.client.query_one(&self.sql.counts, &[&self.run])?;
        let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
        Ok(WorkCounts { ready: n(0), claimed: n(1), done: n(2), failed: n(3) })
    }

    fn results_from(&mut self, from: i64, limit: usize) -> Result<Vec<Committed>, StoreError> {
        let rows = self.client.query(&self.sql.results_from, &[&self.run, &from, &(limit as i64)])?;
        Ok(rows
            .iter()
            .map(|r| Committed {
                ord: r.get(0),
                row: DoneRow {
                    seq: r.get(1),
                    id: r.get(2),
                    status_code: r.get::<_, i32>(3).into(),
                    request_id: r.get(4),
                    response: r.get(5),
                    latency_ms: r.get(6),
                },
            })
            .collect())
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.client.query_opt(&self.sql.meta, &[&self.run, &key])?.map(|r| r.get(0)))
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.client.execute(&self.sql.set_meta, &[&self.run, &key, &value])?;
        Ok(())
    }

    fn register_worker(&mut self, info: &WorkerInfo) -> Result<WorkerId, StoreError> {
        let pid = i32::try_from(info.pid).unwrap_or(i32::MAX);
        let row = self.client.query_one(&self.sql.register_worker, &[&self.run, &info.host, &pid, &info.servers])?;
        Ok(WorkerId(row.get(0)))
    }

    fn beat(&mut self, worker: WorkerId) -> Result<(), StoreError> {
        match self.client.execute(&self.sql.beat, &[&self.run, &worker.0])? {
            0 => Err(StoreError::UnknownWorker(worker.0)),
            _ => Ok(()),
        }
    }

    fn workers(&mut self) -> Result<Vec<WorkerRow>, StoreError> {
        let rows = self.client.query(&self.sql.workers, &[&self.run])?;
        Ok(rows
            .iter()
            .map(|r| WorkerRow {
                id: WorkerId(r.get(0)),
                info: WorkerInfo { host: r.get(1), pid: r.get::<_, i32>(2).max(0) as u32, servers: r.get(3) },
                beat_age_ms: r.get(4),
            })
            .collect())
    }
}
