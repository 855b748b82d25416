//! Feedback: the progress display (a bar on a terminal, status lines otherwise), and the summary that `run`
//! prints at the end (with what only the session knows: [`RunSummary`]) and `status` prints at any time.

mod metrics;
mod progress;
mod run_summary;
mod summary;

pub use metrics::{render as render_metrics, render_run as render_run_metrics, Exposition, RunView, ServerGauge};
pub use progress::{format_duration, spawn_progress, Display, ProgressHandle, ProgressSource};
pub use run_summary::{
    ConcurrencyMode, ConcurrencyReport, EngineReport, ExitReport, FilesReport, ModelConcurrency, RunSummary,
    ServerReport, ServerShare, ThreadRateReport, WorkflowReport,
};
pub use summary::{Summary, SummaryInput};
