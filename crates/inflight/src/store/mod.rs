//! The Store: the single source of truth of a run, in SQLite (WAL).
//!
//! Every job's state, timings, tokens and result live here; the output files are derived from it and can be
//! rebuilt at any time ([`crate::output`]). Reads (claiming pages, status, export) use their own connections;
//! all writes during a run go through one [`Writer`] thread that owns its connection and commits in groups.
//!
//! [`WorkStore`] is the contract several workers sharing one run need (claims as leases, fenced writes, one
//! commit order), implemented over the SQLite state ([`SqliteWork`]) and in PostgreSQL ([`PgWork`], for runs
//! shared by several machines). A run with a PostgreSQL state takes part in it through [`SharedRun`]; a run on a
//! state file uses the SQLite store directly, as one owner.

mod contract;
mod pg_url;
mod postgres;
mod shared;
mod sqlite;
mod sqlite_work;
mod steps;
mod writer;

pub use contract::{
    Claimed, Committed, Fence, Ingested, Lease, LeaseToken, NewJob, WorkCounts, WorkStore, WorkerId, WorkerInfo,
    WorkerRow,
};
pub use pg_url::PgUrl;
pub use postgres::PgWork;
pub use shared::{error_rows, with_steps_to, Claim, Follower, Forward, SharedRun, INGEST_DONE};
pub use sqlite::{BadLineRow, Counts, DoneRow, ErrorRow, FailedAnswer, FailedRow, IngestReport, PendingJob, Store};
pub use sqlite_work::SqliteWork;
pub use steps::{ReadyUnit, StepCount, StepDone};
pub use writer::{committed, AttemptKey, CommittedSink, Completion, Failure, WriteMsg, Writer, WriterHandle};

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (its message is in this one's; not chained, so it is not printed twice).
    #[error("state database: {0}")]
    Sqlite(rusqlite::Error),
    /// PostgreSQL reported an error, or the connection to it failed (never with the URL's password).
    #[error("state database (PostgreSQL): {}", postgres_message(.0))]
    Postgres(::postgres::Error),
    /// A PostgreSQL state URL that cannot be used (the message never repeats its password).
    #[error("{0}")]
    BadUrl(String),
    /// A worker that never joined the run (or whose row is gone).
    #[error("no worker {0} in this run")]
    UnknownWorker(i64),
    /// Reading the input or writing an output file failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The state file belongs to another version of inflight, or is not a state file.
    #[error("{0}")]
    Incompatible(String),
    /// The writer thread is gone (it failed earlier; its error was reported then).
    #[error("the state writer stopped")]
    WriterGone,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
        StoreError::Postgres(e)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

impl StoreError {
    /// Whether the disk holding the state or an output file is full (SQLite's `SQLITE_FULL`, or `ENOSPC`).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            StoreError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            StoreError::Postgres(e) => e.code() == Some(&::postgres::error::SqlState::DISK_FULL),
            _ => false,
        }
    }

    /// Short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_) => "sqlite",
            StoreError::Postgres(_) => "postgres",
            StoreError::BadUrl(_) => "bad_url",
            StoreError::UnknownWorker(_) => "unknown_worker",
            StoreError::Io(_) => "io",
            StoreError::Incompatible(_) => "incompatible",
            StoreError::WriterGone => "writer_gone",
        }
    }

    /// Whether trying the same operation again may succeed (a busy database, a transient I/O error, a lost or
    /// refused PostgreSQL connection, a deadlock or serialization failure PostgreSQL resolved by aborting us).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            }
            StoreError::Postgres(e) => postgres_retryable(e),
            StoreError::Io(e) => e.kind() == std::io::ErrorKind::Interrupted,
            _ => false,
        }
    }
}

/// Whether a PostgreSQL error may pass: the connection is gone or could not be made (an I/O error underneath),
/// the server is starting or shutting down, or it aborted the transaction to resolve a conflict.
fn postgres_retryable(e: &::postgres::Error) -> bool {
    use ::postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // Class 08: connection exceptions.
        return code.code().starts_with("08")
            || [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::ADMIN_SHUTDOWN,
                // This worker stalled inside a transaction and the server ended it (`PgWork::open`).
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(code);
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// A PostgreSQL error's text: the server's message (and detail) where it sent one, else the client's.
fn postgres_message(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        // The client's own error ("error connecting to server") says why only in its source.
        None => match std::error::Error::source(e) {
            Some(why) => format!("{e}: {why}"),
            None => e.to_string(),
        },
    }
}

/// Job status codes in the `jobs.status` column.
pub mod status {
    /// Not yet finished (never sent, or in flight when the process stopped).
    pub const PENDING: i64 = 0;
    /// Succeeded; its result is in the store and in OUT.jsonl.
    pub const DONE: i64 = 2;
    /// Failed permanently or out of attempts; in OUT.errors.jsonl.
    pub const FAILED: i64 = 3;
}

/// An empty histogram of latencies in ms, bounded (1 ms to a day) so values beyond the initial range are
/// recorded, not clamped.
pub(crate) fn empty_latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 86_400_000, 3).expect("valid bounds")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
