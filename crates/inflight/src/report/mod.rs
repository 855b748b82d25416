//! Feedback: the progress display (a bar on a terminal, status lines otherwise), and the
//! summary that `run` prints at the end and `status` prints at any time.

mod progress;
mod summary;

pub use progress::{format_duration, spawn_progress, Display, ProgressHandle, ProgressSource};
pub use summary::{Summary, SummaryInput};
