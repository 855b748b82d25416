//! The SQLite store: opening and migrating, streaming ingest, reading pages and outcomes, counts.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{now_ms, StoreError};
use crate::code::ErrorCode;
use crate::job::{BadLine, Endpoint, Entry, JobReader};

const MIGRATIONS: &[&str] = &[
    include_str!("sql/001_init.sql"),
    include_str!("sql/002_workflow.sql"),
    include_str!("sql/003_step_attempts.sql"),
    include_str!("sql/004_bad_line_ids.sql"),
];
/// Lines per ingest transaction: large enough to amortize the commit, small enough to bound a lost tail.
const INGEST_BATCH: usize = 20_000;

/// A run's state database.
pub struct Store {
    pub(super) conn: Connection,
    path: PathBuf,
}

/// A job ready to send.
#[derive(Debug, Clone)]
pub struct PendingJob {
    /// Store sequence number (insertion order).
    pub seq: i64,
    /// The job's id.
    pub id: String,
    /// The endpoint the body is for.
    pub endpoint: Endpoint,
    /// The serialized OpenAI-shaped request body.
    pub body: String,
    /// Attempts already spent by earlier sessions.
    pub attempts: u32,
    /// Input line number.
    pub line: i64,
}

/// A line of the results file, as stored: a finished job.
#[derive(Debug, Clone)]
pub struct DoneRow {
    /// Store sequence number.
    pub seq: i64,
    /// The job's id.
    pub id: String,
    /// HTTP status of the answer.
    pub status_code: i64,
    /// The server's request id (or ours); `None` for a workflow job.
    pub request_id: Option<String>,
    /// The answer body (JSON text); for a workflow job, its whole output line.
    pub response: String,
    /// End-to-end latency of the answered attempt (a workflow job: its steps' sum).
    pub latency_ms: i64,
}

/// A line of the errors file, as stored.
#[derive(Debug, Clone)]
pub enum ErrorRow {
    /// A job that failed for good.
    Failed(FailedRow),
    /// An input line that did not become a job (keyed by its line; its own id when it had a readable one).
    BadLine(BadLineRow),
}

/// A job that failed for good.
#[derive(Debug, Clone)]
pub struct FailedRow {
    /// Store sequence number.
    pub seq: i64,
    /// Input line number.
    pub line: i64,
    /// The job's id.
    pub id: String,
    /// The server's last answer, if it answered.
    pub answer: Option<FailedAnswer>,
    /// Error code.
    pub code: String,
    /// Error message.
    pub message: String,
    /// The step a workflow job failed in.
    pub step: Option<String>,
}

/// The answer a failed job last got.
#[derive(Debug, Clone)]
pub struct FailedAnswer {
    /// HTTP status.
    pub status_code: i64,
    /// The server's request id, if it gave one.
    pub request_id: Option<String>,
    /// The answer body (JSON text), if it was JSON.
    pub body: Option<String>,
}

/// An input line that did not become a job.
#[derive(Debug, Clone)]
pub struct BadLineRow {
    /// Input line number.
    pub line: i64,
    /// Error code.
    pub code: String,
    /// Error message.
    pub message: String,
    /// The line's own id, when it had a readable one.
    pub custom_id: Option<String>,
}

impl ErrorRow {
    /// Input line number.
    pub fn line(&self) -> i64 {
        match self {
            ErrorRow::Failed(f) => f.line,
            ErrorRow::BadLine(b) => b.line,
        }
    }

    /// Error code.
    pub fn code(&self) -> &str {
        match self {
            ErrorRow::Failed(f) => &f.code,
            ErrorRow::BadLine(b) => &b.code,
        }
    }

    /// Error message.
    pub fn message(&self) -> &str {
        match self {
            ErrorRow::Failed(f) => &f.message,
            ErrorRow::BadLine(b) => &b.message,
        }
    }
}

/// What an ingest pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct IngestReport {
    /// Jobs accepted by this pass.
    pub jobs: u64,
    /// Bad lines recorded by this pass.
    pub bad_lines: u64,
}

/// Job counts and totals of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Not finished yet.
    pub pending: u64,
    /// Succeeded.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Input lines that did not become jobs.
    pub bad_lines: u64,
    /// Successful answers cut by the length limit.
    pub length_cut: u64,
    /// Prompt tokens over all answers.
    pub prompt_tokens: u64,
    /// Completion tokens over all answers.
    pub completion_tokens: u64,
    /// First send time (Unix ms), over all sessions.
    pub first_sent_ms: Option<i64>,
    /// Last finish time (Unix ms).
    pub last_finished_ms: Option<i64>,
}

impl Counts {
    /// Accepted jobs.
    pub fn total(&self) -> u64 {
        self.pending + self.done + self.failed
    }
}

impl Store {
    /// Opens (creating if needed) the state at `path`, in WAL mode, migrated to the current schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        configure(&conn)?;
        let mut store = Store { conn, path: path.to_path_buf() };
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing state for reading only (status, export); never creates or migrates it.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Incompatible(format!("no state file at {}", path.display())));
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != MIGRATIONS.len() {
            return Err(StoreError::Incompatible(format!(
                "{} has schema version {version}, this inflight reads version {}",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        Ok(Store { conn, path: path.to_path_buf() })
    }

    /// Opens a second connection to the same file (for reading pages while the writer owns the first).
    pub fn reopen(&self) -> Result<Store, StoreError> {
        let conn = Connection::open(&self.path)?;
        configure(&conn)?;
        Ok(Store { conn, path: self.path.clone() })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: usize = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Incompatible(format!(
                "{} was written by a newer inflight (schema {version})",
                self.path.display()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// A value from the run's metadata.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// Sets a metadata value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
            [key, value],
        )?;
        Ok(())
    }

    /// Streams jobs and bad lines from `jobs` into the store in large transactions. Progress (lines read, digest
    /// of the bytes read) is committed with each batch under `ingest_lines`/`ingest_sha256`, so an interrupted
    /// ingest resumes where it stopped. Returns once the input is exhausted.
    pub fn ingest<R: BufRead>(
        &mut self,
        jobs: &mut JobReader<'_, R>,
        mut on_batch: impl FnMut(u64),
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let mut next_err_ord = self.next_error_ord()?;
        let queued_at = now_ms();
        loop {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut exhausted = false;
            {
                let mut insert_job = tx.prepare_cached(include_str!("sql/insert_job.sql"))?;
                let mut insert_bad = tx.prepare_cached(include_str!("sql/insert_bad_line.sql"))?;
                let mut bad = |b: BadLine, ord: &mut i64| -> Result<(), StoreError> {
                    if insert_bad.execute(params![b.line as i64, b.code, b.message, *ord, b.custom_id])? > 0 {
                        *ord += 1;
                        report.bad_lines += 1;
                    }
                    Ok(())
                };
                for _ in 0..INGEST_BATCH {
                    match jobs.next_entry()? {
                        None => {
                            exhausted = true;
                            break;
                        }
                        Some(Entry::Job(job)) => {
                            let line = job.line as i64;
                            let inserted =
                                insert_job.execute(params![line, job.id, job.endpoint.code(), job.body, queued_at])?;
                            if inserted > 0 {
                                report.jobs += 1;
                                continue;
                            }
                            let first: i64 =
                                tx.query_row(include_str!("sql/job_line_by_id.sql"), [&job.id], |r| r.get(0))?;
                            if first != line {
                                let message = format!("duplicate id {:?} (first on line {first})", job.id);
                                let custom_id = Some(job.id);
                                let dup = BadLine { line: job.line, code: ErrorCode::DuplicateId, message, custom_id };
                                bad(dup, &mut next_err_ord)?;
                            }
                        }
                        Some(Entry::Bad(b)) => bad(b, &mut next_err_ord)?,
                    }
                }
            }
            let lines = jobs.lines_read().to_string();
            let digest = jobs.digest_so_far();
            for (k, v) in [("ingest_lines", lines.as_str()), ("ingest_sha256", digest.as_str())] {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
                    [k, v],
                )?;
            }
            if exhausted {
                tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('ingest_done', '1')", [])?;
            }
            tx.commit()?;
            on_batch(jobs.lines_read());
            if exhausted {
                return Ok(report);
            }
        }
    }

    /// The next free position in the errors file.
    pub fn next_error_ord(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(out_ord) FROM jobs WHERE status = 3), -1),
                        COALESCE((SELECT MAX(out_ord) FROM bad_lines), -1)) + 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// The next free position in the results file.
    pub fn next_done_ord(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(out_ord), -1) + 1 FROM jobs WHERE status = 2", [], |r| r.get(0))?)
    }

    /// Up to `limit` pending jobs after `after_seq`, in order.
    pub fn pending_page(&self, after_seq: i64, limit: usize) -> Result<Vec<PendingJob>, StoreError> {
        let mut stmt = self.conn.prepare_cached(include_str!("sql/pending_page.sql"))?;
        let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
            let endpoint: String = r.get(2)?;
            Ok(PendingJob {
                seq: r.get(0)?,
                id: r.get(1)?,
                endpoint: Endpoint::from_code(&endpoint).unwrap_or(Endpoint::Chat),
                body: r.get(3)?,
                attempts: r.get(4)?,
                line: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The distinct models the pending jobs name (to check them against the servers before sending).
    pub fn pending_models(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare(include_str!("sql/pending_models.sql"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Calls `f` with every successful result from position `from` on, in commit order.
    pub fn for_each_done(
        &self,
        from: i64,
        mut f: impl FnMut(DoneRow) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(include_str!("sql/done_rows.sql"))?;
        let mut rows = stmt.query([from])?;
        while let Some(r) = rows.next()? {
            f(DoneRow {
                seq: r.get(0)?,
                id: r.get(1)?,
                status_code: r.get(2)?,
                request_id: r.get(3)?,
                response: r.get(4)?,
                latency_ms: r.get(5)?,
            })?;
        }
        Ok(())
    }

    /// Calls `f` with every error record (failed jobs and bad lines) from position `from` on, in commit order.
    pub fn for_each_error(
        &self,
        from: i64,
        mut f: impl FnMut(ErrorRow) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(include_str!("sql/error_rows.sql"))?;
        let mut rows = stmt.query([from])?;
        while let Some(r) = rows.next()? {
            // Bad lines have no sequence number: they never became jobs.
            let row = match r.get::<_, Option<i64>>(0)? {
                Some(seq) => ErrorRow::Failed(FailedRow {
                    seq,
                    line: r.get(1)?,
                    id: r.get(2)?,
                    answer: match r.get::<_, Option<i64>>(3)? {
                        Some(status_code) => Some(FailedAnswer { status_code, request_id: r.get(4)?, body: r.get(5)? }),
                        None => None,
                    },
                    code: r.get(6)?,
                    message: r.get(7)?,
                    step: r.get(8)?,
                }),
                None => ErrorRow::BadLine(BadLineRow {
                    line: r.get(1)?,
                    custom_id: r.get(2)?,
                    code: r.get(6)?,
                    message: r.get(7)?,
                }),
            };
            f(row)?;
        }
        Ok(())
    }

    /// Counts by outcome and token totals.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        Ok(self.conn.query_row(include_str!("sql/counts.sql"), [], |r| {
            Ok(Counts {
                pending: r.get::<_, i64>(0)? as u64,
                done: r.get::<_, i64>(1)? as u64,
                failed: r.get::<_, i64>(2)? as u64,
                bad_lines: r.get::<_, i64>(3)? as u64,
                length_cut: r.get::<_, i64>(4)? as u64,
                prompt_tokens: r.get::<_, i64>(5)? as u64,
                completion_tokens: r.get::<_, i64>(6)? as u64,
                first_sent_ms: r.get(7)?,
                last_finished_ms: r.get(8)?,
            })
        })?)
    }

    /// Latencies of successful jobs, for percentiles.
    pub fn latency_histogram(&self) -> Result<hdrhistogram::Histogram<u64>, StoreError> {
        let mut h = super::empty_latency_histogram();
        let mut stmt = self.conn.prepare("SELECT latency_ms FROM jobs WHERE status = 2 AND latency_ms IS NOT NULL")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            h.saturating_record(r.get::<_, i64>(0)?.max(0) as u64);
        }
        Ok(h)
    }

    /// Puts every failed job back to pending (`--retry-failed`) and renumbers the errors file. Returns how many.
    pub fn reopen_failed(&mut self) -> Result<usize, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(include_str!("sql/reset_step_attempts.sql"), [])?;
        let n = tx.execute(include_str!("sql/reopen_failed.sql"), [])?;
        if n > 0 {
            tx.execute_batch(include_str!("sql/renumber_errors.sql"))?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Runs SQLite's own consistency check; `"ok"` when the file is sound.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Incompatible(format!("could not switch the state file to WAL (got {mode})")));
    }
    // NORMAL in WAL mode survives a killed process; only a power loss can drop the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}
