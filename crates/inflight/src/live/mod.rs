//! What a run knows about itself while it goes, shared by the layers that send (dispatch, workflow) and the
//! ones that show (report): this session's counters and whether the server is reachable. Its own module so
//! that neither side imports the other.

mod health;

pub use health::Health;

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Latency of the successful attempt of each job done in this session.
    pub latency: LatencyBuckets,
}

impl LiveStats {
    /// The counters now, as plain numbers (several sessions' add up: `serve`'s batches).
    pub fn snapshot(&self) -> StatsSnapshot {
        let (latency_counts, latency_sum_ms) = self.latency.snapshot();
        StatsSnapshot {
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            latency_counts,
            latency_sum_ms,
        }
    }
}

/// Upper bounds, in seconds, of the latency histogram's buckets; one more bucket counts what is above the last.
pub const LATENCY_BOUNDS_S: [f64; 14] =
    [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// A latency histogram with fixed buckets ([`LATENCY_BOUNDS_S`]), written by the recorder without a lock.
#[derive(Debug, Default)]
pub struct LatencyBuckets {
    counts: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    sum_ms: AtomicU64,
}

impl LatencyBuckets {
    /// Counts one answer that took `ms` milliseconds.
    pub fn record(&self, ms: u64) {
        let i = LATENCY_BOUNDS_S.iter().position(|b| ms as f64 <= b * 1000.0).unwrap_or(LATENCY_BOUNDS_S.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative) and the sum in milliseconds.
    fn snapshot(&self) -> ([u64; LATENCY_BOUNDS_S.len() + 1], u64) {
        (self.counts.each_ref().map(|c| c.load(Ordering::Relaxed)), self.sum_ms.load(Ordering::Relaxed))
    }
}

/// [`LiveStats`] read at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Jobs succeeded.
    pub done: u64,
    /// Jobs failed.
    pub failed: u64,
    /// Attempts retried.
    pub retries: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Answers per latency bucket ([`LATENCY_BOUNDS_S`], then the overflow bucket).
    pub latency_counts: [u64; LATENCY_BOUNDS_S.len() + 1],
    /// Sum of those answers' latencies, in milliseconds.
    pub latency_sum_ms: u64,
}

impl std::ops::AddAssign for StatsSnapshot {
    fn add_assign(&mut self, o: StatsSnapshot) {
        self.done += o.done;
        self.failed += o.failed;
        self.retries += o.retries;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        for (a, b) in self.latency_counts.iter_mut().zip(o.latency_counts) {
            *a += b;
        }
        self.latency_sum_ms += o.latency_sum_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_at_or_above_it() {
        let stats = LiveStats::default();
        stats.latency.record(25);
        stats.latency.record(26);
        stats.latency.record(10_000_000);
        let s = stats.snapshot();
        assert_eq!((s.latency_counts[0], s.latency_counts[1], s.latency_counts[LATENCY_BOUNDS_S.len()]), (1, 1, 1));
        assert_eq!(s.latency_sum_ms, 10_000_051);
        let mut sum = s;
        sum += s;
        assert_eq!(sum.latency_counts[0], 2);
    }
}
