//! Feedback: live counters, the progress display (a bar on a terminal, status lines otherwise), and the
//! summary that `run` prints at the end (with what only the session knows: [`RunSummary`]) and `status` prints
//! at any time.

mod progress;
mod run_summary;
mod summary;

pub use progress::{format_duration, spawn_progress, Display, ProgressHandle, ProgressSource};
pub use run_summary::{
    ConcurrencyMode, ConcurrencyReport, ExitReport, FilesReport, ModelConcurrency, RunSummary, ServerReport,
    WorkflowReport,
};
pub use summary::{Summary, SummaryInput};

use std::sync::atomic::AtomicU64;

/// Counters of this session, updated by the recorder and read by the progress display.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Jobs succeeded in this session.
    pub done: AtomicU64,
    /// Jobs failed in this session.
    pub failed: AtomicU64,
    /// Attempts retried in this session.
    pub retries: AtomicU64,
    /// Prompt tokens in this session.
    pub prompt_tokens: AtomicU64,
    /// Completion tokens in this session.
    pub completion_tokens: AtomicU64,
}
