//! The recorder: the one owner of what finished jobs mean for the run.
//!
//! Job tasks send their outcomes here; the recorder updates the live counters and forwards to the store's
//! writer. It also owns the "probation" rule: while no request has succeeded yet, permanent failures are held
//! back, and if the first few all fail the same way (model not found, bad key) the run stops at once with the
//! server's message instead of writing a million identical error lines.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::report::LiveStats;
use crate::store::{Completion, Failure, WriteMsg};

/// How many identical permanent failures, before any success, stop the run.
pub const PROBATION: usize = 10;

/// A finished job.
pub enum Outcome {
    /// It succeeded.
    Done(Box<Completion>),
    /// It failed; `permanent` when the server refused it (not out of retries).
    Failed {
        /// The failure to record.
        failure: Box<Failure>,
        /// Refused outright (a non-retryable error).
        permanent: bool,
    },
}

/// Why the recorder stopped the run.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The store's writer is gone.
    WriterFailed,
    /// The first requests all failed permanently the same way: the message.
    SameFailure(String),
}

/// Receives outcomes until every sender is gone; returns why it stopped the run, if it did.
pub async fn record(
    mut rx: UnboundedReceiver<Outcome>,
    writer: Sender<WriteMsg>,
    stats: Arc<LiveStats>,
    stop: [CancellationToken; 2],
) -> Option<Verdict> {
    // A verdict stops the run at once: no drain, the requests in flight are cancelled and stay pending.
    let stop_now = || stop.iter().for_each(CancellationToken::cancel);
    let mut held: Vec<Box<Failure>> = Vec::new();
    let mut on_probation = true;
    let mut verdict = None;
    let release =
        |held: &mut Vec<Box<Failure>>| -> bool { held.drain(..).all(|f| writer.send(WriteMsg::Failed(f)).is_ok()) };
    while let Some(outcome) = rx.recv().await {
        if verdict.is_some() {
            continue; // stopping: nothing more is recorded, the jobs stay pending
        }
        let sent = match outcome {
            Outcome::Done(c) => {
                stats.done.fetch_add(1, Ordering::Relaxed);
                stats.prompt_tokens.fetch_add(c.prompt_tokens.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
                stats.completion_tokens.fetch_add(c.completion_tokens.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
                on_probation = false;
                release(&mut held) && writer.send(WriteMsg::Done(c)).is_ok()
            }
            Outcome::Failed { failure, permanent } => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let same = held.first().is_none_or(|f| f.code == failure.code && f.message == failure.message);
                if on_probation && permanent && same {
                    held.push(failure);
                    if held.len() >= PROBATION {
                        let f = &held[0];
                        verdict = Some(Verdict::SameFailure(format!(
                            "the first {PROBATION} requests all failed the same way ({}): {}",
                            f.code, f.message
                        )));
                        stop_now();
                    }
                    true
                } else {
                    on_probation = false;
                    release(&mut held) && writer.send(WriteMsg::Failed(failure)).is_ok()
                }
            }
        };
        if !sent {
            verdict = Some(Verdict::WriterFailed);
            stop_now();
        }
    }
    if verdict.is_none() && !release(&mut held) {
        verdict = Some(Verdict::WriterFailed);
    }
    verdict
}
