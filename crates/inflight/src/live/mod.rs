//! What a run knows about itself while it goes, shared by the layers that send (dispatch, workflow) and the
//! ones that show (report): this session's counters and whether the server is reachable. Its own module so
//! that neither side imports the other.

mod health;

pub use health::Health;

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
    /// Prompt tokens the server took from its prefix cache in this session, where it says.
    pub cached_prompt_tokens: AtomicU64,
}
