//! The Store: the single source of truth of a run, in SQLite (WAL).
//!
//! Every job's state, timings, tokens and result live here; the output files are derived from it and can be
//! rebuilt at any time ([`crate::output`]). Reads (claiming pages, status, export) use their own connections;
//! all writes during a run go through one [`Writer`] thread that owns its connection and commits in groups.

mod sqlite;
mod steps;
mod writer;

pub use sqlite::{BadLineRow, Counts, DoneRow, ErrorRow, FailedAnswer, FailedRow, IngestReport, PendingJob, Store};
pub use steps::{ReadyUnit, StepCount, StepDone};
pub use writer::{AttemptKey, CommittedSink, Completion, Failure, WriteMsg, Writer, WriterHandle};

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (its message is in this one's; not chained, so it is not printed twice).
    #[error("state database: {0}")]
    Sqlite(rusqlite::Error),
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
            _ => false,
        }
    }

    /// Short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_) => "sqlite",
            StoreError::Io(_) => "io",
            StoreError::Incompatible(_) => "incompatible",
            StoreError::WriterGone => "writer_gone",
        }
    }

    /// Whether trying the same operation again may succeed (a busy database, a transient I/O error).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            }
            StoreError::Io(e) => e.kind() == std::io::ErrorKind::Interrupted,
            _ => false,
        }
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
