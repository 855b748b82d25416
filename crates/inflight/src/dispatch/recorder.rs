//! The recorder: the one owner of what finished jobs mean for the run.
//!
//! Job tasks send their outcomes here; the recorder updates the live counters and forwards to the store's
//! writer. It applies the run's [`Probation`] (the whole plain run is one step of it): while no request has
//! been answered, identical refusals are held back, and if the first few all fail the same way (model not
//! found, bad key) the run stops at once with the server's message instead of writing a million identical
//! error lines.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::probation::{Judged, Probation};
use crate::live::LiveStats;
use crate::store::{Completion, Failure, WriteMsg};

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
    /// No server of the run can take jobs (each was set aside): stop with this message.
    NoServer(String),
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
    let probation = Probation::new(1);
    let mut verdict = None;
    let send_all = |msgs: Vec<Box<Failure>>, last: Option<WriteMsg>| -> bool {
        msgs.into_iter().map(WriteMsg::Failed).chain(last).all(|m| writer.send(m).is_ok())
    };
    while let Some(outcome) = rx.recv().await {
        if verdict.is_some() {
            continue; // stopping: nothing more is recorded, the jobs stay pending
        }
        let sent = match outcome {
            Outcome::Done(c) => {
                stats.done.fetch_add(1, Ordering::Relaxed);
                stats.latency.record((c.finished_ms - c.sent_ms).max(0) as u64);
                stats.prompt_tokens.fetch_add(c.prompt_tokens.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
                stats.completion_tokens.fetch_add(c.completion_tokens.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
                send_all(probation.answered(0), Some(WriteMsg::Done(c)))
            }
            Outcome::NoServer(why) => {
                verdict = Some(Verdict::SameFailure(why));
                stop_now();
                true
            }
            Outcome::Failed { failure, permanent } => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                match probation.failed(0, None, failure, permanent) {
                    Judged::Record(f) => writer.send(WriteMsg::Failed(f)).is_ok(),
                    Judged::Held => true,
                    Judged::Stop(why) => {
                        verdict = Some(Verdict::SameFailure(why));
                        stop_now();
                        true
                    }
                }
            }
        };
        if !sent {
            verdict = Some(Verdict::WriterFailed);
            stop_now();
        }
    }
    if verdict.is_none() && !send_all(probation.release(&[0]), None) {
        verdict = Some(Verdict::WriterFailed);
    }
    verdict
}
