//! The one attempt path: every way of sending a piece of work (a plain job, a workflow step, and later the
//! engine, several servers, PostgreSQL workers) goes through [`Attempts::send`] for the permit, the send, the
//! retries with backoff, the outage accounting and the attempt count in the store.
//!
//! An attempt is committed to the store *before* its request goes out, so a process killed while a request is
//! in flight has already spent that attempt: a resumed run sends a piece of work at most `max_attempts` times
//! in total, whatever happens between the sends. A failure that the outage rule calls free (nobody could reach
//! the server) hands its attempt back.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::{retry, sample_of};
use crate::backend::{Answer, Backend, BackendError};
use crate::code::ErrorCode;
use crate::job::Endpoint;
use crate::live::{Health, LiveStats};
use crate::store::{now_ms, AttemptKey, Failure, WriteMsg};
use crate::tune::{Limiter, Permit, Sample};

/// What every attempt needs from its run: one per server a run sends to.
pub struct Attempts {
    /// The server.
    pub backend: Arc<dyn Backend>,
    /// Whether the server is reachable.
    pub health: Health,
    /// The store's writer.
    pub writer: Sender<WriteMsg>,
    /// Live counters (retries).
    pub stats: Arc<LiveStats>,
    /// Attempts per piece of work before it fails (transient errors only; permanent ones fail at once).
    pub max_attempts: u32,
    /// Soft stop: no new sends, no more retries.
    pub stop: CancellationToken,
    /// Hard stop: cancel requests in flight.
    pub hard: CancellationToken,
    /// Other servers can take the work: on an outage, hand it back ([`Tried::Unreachable`]) instead of
    /// waiting for this server to return.
    pub reroute: bool,
}

/// Where an attempt takes its permit and reports its sample.
pub struct Lane<'a> {
    /// Permits: how many requests may be in flight.
    pub limiter: &'a Limiter,
    /// The controller's samples (`None` for a fixed concurrency, or while samples would mislead it).
    pub samples: Option<&'a UnboundedSender<Sample>>,
}

/// One request to send, and the attempts it has spent so far (in earlier sessions too).
pub struct Request<'a> {
    /// Which piece of work it is, in the store.
    pub key: &'a AttemptKey,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The request body.
    pub body: &'a str,
    /// Attempts already spent.
    pub attempts: u32,
}

/// How an attempt path ended.
pub enum Tried {
    /// The server answered. The permit is still held, for a caller that must ask again (an answer a
    /// workflow step's schema refuses); `attempts` counts this one.
    Answered {
        /// The answer.
        answer: Answer,
        /// Attempts spent in total, this one included.
        attempts: u32,
        /// When the answered attempt was sent (Unix ms).
        sent_ms: i64,
        /// Its latency.
        latency: Duration,
        /// The permit it was sent under.
        permit: Permit,
    },
    /// Failed for good: refused (a permanent error), or out of attempts.
    Failed {
        /// The last error.
        error: BackendError,
        /// Attempts spent in total.
        attempts: u32,
        /// When the last attempt was sent (Unix ms).
        sent_ms: i64,
    },
    /// Every attempt was spent before this session (the last one was in flight when a run stopped).
    Exhausted {
        /// Attempts spent in total.
        attempts: u32,
    },
    /// The server went away while the work was in flight (no attempt charged); with `reroute`, for another
    /// server to take.
    Unreachable {
        /// Attempts spent in total (the free one handed back).
        attempts: u32,
    },
    /// The run is stopping; the work stays pending.
    Stopped,
}

impl Attempts {
    /// A permit once the server is reachable, or `None` when the run is stopping.
    pub async fn acquire(&self, limiter: &Limiter) -> Option<Permit> {
        loop {
            if !self.health.wait_open().await {
                return None;
            }
            let permit = tokio::select! {
                p = limiter.acquire() => p,
                _ = self.stop.cancelled() => return None,
            };
            if !self.health.is_paused() {
                return Some(permit);
            }
        }
    }

    /// A permit if one is free now and the server is reachable (`None` otherwise, or when the run is stopping).
    pub fn try_acquire(&self, limiter: &Limiter) -> Option<Permit> {
        if self.stop.is_cancelled() || self.health.is_paused() {
            return None;
        }
        limiter.try_acquire()
    }

    /// Sends `req` under `permit` until it is answered, fails for good, or the run stops.
    pub async fn send(&self, lane: &Lane<'_>, req: Request<'_>, permit: Permit) -> Tried {
        let mut attempts = req.attempts;
        if attempts >= self.max_attempts {
            return Tried::Exhausted { attempts };
        }
        let mut permit = Some(permit);
        loop {
            let held = match permit.take() {
                Some(p) => p,
                None => match self.acquire(lane.limiter).await {
                    Some(p) => p,
                    None => return Tried::Stopped,
                },
            };
            attempts += 1;
            if !self.record(req.key, attempts).await {
                return Tried::Stopped;
            }
            let sent_ms = now_ms();
            let sent = self.health.sent();
            let started = Instant::now();
            let result = tokio::select! {
                r = self.backend.send(req.endpoint, req.body) => r,
                _ = self.hard.cancelled() => return Tried::Stopped,
            };
            let latency = started.elapsed();
            if !matches!(&result, Err(e) if e.is_unreachable()) {
                self.health.answered(&sent);
            }
            if let (Some(tx), Some(s)) = (lane.samples, sample_of(&result, latency)) {
                let _ = tx.send(s);
            }
            let error = match result {
                Ok(answer) => {
                    let cached = answer.cached_tokens.unwrap_or(0).max(0) as u64;
                    self.stats.cached_prompt_tokens.fetch_add(cached, Ordering::Relaxed);
                    return Tried::Answered { answer, attempts, sent_ms, latency, permit: held };
                }
                Err(e) => e,
            };
            drop(held);
            if error.is_unreachable() && self.reroute && !self.health.judge(&sent).await {
                attempts -= 1;
                self.refund(req.key, attempts, &error);
                return Tried::Unreachable { attempts };
            }
            if error.is_unreachable() && !self.health.unreachable(&sent).await {
                // Nobody could reach the server: this attempt was not the request's own failure.
                attempts -= 1;
                self.refund(req.key, attempts, &error);
                continue;
            }
            if !error.is_retryable() || attempts >= self.max_attempts {
                return Tried::Failed { error, attempts, sent_ms };
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            let _ =
                self.writer.send(WriteMsg::Attempt { key: req.key.clone(), attempts, error: Some(error.to_string()) });
            tracing::debug!(key = ?req.key, attempts, "retrying after: {error}");
            tokio::select! {
                _ = tokio::time::sleep(retry::backoff(attempts, error.retry_after())) => {}
                _ = self.stop.cancelled() => return Tried::Stopped,
            }
        }
    }

    /// Commits `attempts` for `key` before the attempt is sent. False when the writer is gone or the run is
    /// cancelled hard (then nothing is sent).
    async fn record(&self, key: &AttemptKey, attempts: u32) -> bool {
        let (ack, committed) = tokio::sync::oneshot::channel();
        let queued = self.writer.send(WriteMsg::Attempt { key: key.clone(), attempts, error: None }).is_ok()
            && self.writer.send(WriteMsg::Flush(ack)).is_ok();
        if !queued {
            self.stop.cancel();
            return false;
        }
        tokio::select! {
            r = committed => r.is_ok(),
            _ = self.hard.cancelled() => false,
        }
    }

    /// Gives back an attempt that an outage (or a server on trial) made free (not waited for: a kill before it commits charges the
    /// attempt, which keeps the bound on sends).
    pub(super) fn refund(&self, key: &AttemptKey, attempts: u32, error: &BackendError) {
        let _ = self.writer.send(WriteMsg::Attempt { key: key.clone(), attempts, error: Some(error.to_string()) });
    }
}

/// What a failed piece of work is, for its failure record.
pub struct Work<'a> {
    /// Store sequence number of the job.
    pub seq: i64,
    /// The job's id.
    pub id: &'a str,
    /// Input line number.
    pub line: i64,
    /// The workflow step, if it is one.
    pub step: Option<&'a str>,
}

impl Work<'_> {
    /// The failure record of an attempt path that ended `Failed` or `Exhausted` (`None` for the others).
    /// Returns the record and whether the server refused the work outright (a permanent error).
    pub fn failure(&self, tried: &Tried) -> Option<(Box<Failure>, bool)> {
        let (attempts, sent_ms, error) = match tried {
            Tried::Failed { error, attempts, sent_ms } => (*attempts, Some(*sent_ms), Some(error)),
            Tried::Exhausted { attempts } => (*attempts, None, None),
            Tried::Answered { .. } | Tried::Unreachable { .. } | Tried::Stopped => return None,
        };
        let (code, message) = match error {
            Some(e) if e.is_retryable() => (e.code(), format!("gave up after {attempts} attempts: {e}")),
            Some(e) => (e.code(), e.to_string()),
            None => (
                ErrorCode::AttemptsExhausted,
                format!("gave up after {attempts} attempts: the last was in flight when an earlier run stopped"),
            ),
        };
        let permanent = error.is_some_and(|e| !e.is_retryable());
        Some((self.record(attempts, sent_ms, error, code, message), permanent))
    }

    /// A failure record with the given code and message (`error`: the server's answer, if it gave one).
    pub fn record(
        &self,
        attempts: u32,
        sent_ms: Option<i64>,
        error: Option<&BackendError>,
        code: ErrorCode,
        message: String,
    ) -> Box<Failure> {
        Box::new(Failure {
            seq: self.seq,
            id: self.id.to_owned(),
            line: self.line,
            attempts,
            sent_ms,
            finished_ms: now_ms(),
            status_code: error.and_then(BackendError::status),
            response: error.and_then(|e| e.body().map(str::to_owned)),
            code,
            message,
            step: self.step.map(str::to_owned),
        })
    }
}
