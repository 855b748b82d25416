//! Outage detection: a failure to reach the server costs a job an attempt only while the server still
//! answers (a ping right after the failure). When nobody gets through, the run pauses (no attempts spent), probes with backoff and resumes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError};

/// Pings in a row that must all fail before a server counts as unreachable: one lost ping through a flaky
/// network or proxy is not an outage.
const PINGS: usize = 3;

/// Shared view of whether the server is reachable.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    open: watch::Sender<bool>,
    check: Mutex<()>,
    /// Outages so far: a request sent before the latest began failed because of it, not on its own.
    outages: AtomicU64,
    /// When the latest request the server answered (anything at all) was sent (ms since `origin`).
    answered: watch::Sender<u64>,
    origin: Instant,
    stop: CancellationToken,
}

/// When a request was sent, for judging its failure: the outage count then, and the time (ms since origin).
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    outages: u64,
    at: u64,
}

impl Health {
    /// Health of `backend`; waiting stops when `stop` is cancelled.
    pub fn new(backend: Arc<dyn Backend>, stop: CancellationToken) -> Health {
        let (open, _) = watch::channel(true);
        Health {
            inner: Arc::new(Inner {
                backend,
                open,
                check: Mutex::new(()),
                outages: AtomicU64::new(0),
                answered: watch::channel(0).0,
                origin: Instant::now(),
                stop,
            }),
        }
    }

    /// Whether the run is paused for an outage.
    pub fn is_paused(&self) -> bool {
        !*self.inner.open.borrow()
    }

    /// Waits until the run is not paused. Returns false if the run is stopping.
    pub async fn wait_open(&self) -> bool {
        let mut rx = self.inner.open.subscribe();
        tokio::select! {
            r = rx.wait_for(|open| *open) => r.is_ok(),
            _ = self.inner.stop.cancelled() => false,
        }
    }

    /// Take it before sending, and pass it to [`Health::unreachable`] on a failure.
    pub fn sent(&self) -> Sent {
        Sent { outages: self.inner.outages.load(Ordering::Acquire), at: self.now_ms() }
    }

    /// The outages so far.
    pub fn outages(&self) -> u64 {
        self.inner.outages.load(Ordering::Acquire)
    }

    /// The server answered the request sent at `sent` (any answer, an error status too): it was there then.
    pub fn answered(&self, sent: &Sent) {
        let ms = sent.at;
        self.inner.answered.send_if_modified(|last| {
            let newer = ms > *last;
            *last = (*last).max(ms);
            newer
        });
    }

    fn now_ms(&self) -> u64 {
        self.inner.origin.elapsed().as_millis() as u64
    }

    /// Waits until the server answers some request sent after `failed` (ms since origin): an answer sent
    /// before it might have been on its way when the server went away.
    async fn answer_after(&self, failed: u64) {
        let _ = self.inner.answered.subscribe().wait_for(|&last| last > failed).await;
    }

    /// A request sent at outage count `sent_at` could not reach the server. Returns whether that should cost
    /// the job an attempt: yes if the server answers a ping right after (the failure was this request's own)
    /// and no outage began while it was in flight; otherwise the run pauses until the server is back (or the
    /// run stops) and the attempt is free. Checks are serialized, so a burst of failures costs one ping, and
    /// those behind it find the run paused — or, if it already resumed, find that an outage began after they
    /// were sent (without that, a failure handled late, after the server came back, would cost an attempt).
    pub async fn unreachable(&self, sent: &Sent) -> bool {
        if self.judge(sent).await {
            return true;
        }
        self.wait_open().await;
        false
    }

    /// [`Health::unreachable`] without the wait: whether the failure costs the job an attempt; on an outage the
    /// server is paused and probed, and the caller may send the work elsewhere meanwhile. A server that answers
    /// a request sent after this one failed is there, whatever a ping says (a ping that stalls would hold up
    /// every other failure waiting to be judged).
    pub async fn judge(&self, sent: &Sent) -> bool {
        let failed = self.now_ms();
        tokio::select! {
            _ = self.answer_after(failed) => self.outages() == sent.outages,
            reachable = self.check(sent) => reachable,
        }
    }

    /// The ping half of [`Health::judge`], one at a time.
    async fn check(&self, sent: &Sent) -> bool {
        let _guard = self.inner.check.lock().await;
        if !self.is_paused() && self.outages() == sent.outages {
            if self.reachable().await {
                return true;
            }
            tracing::warn!(server = self.inner.backend.url(), "server unreachable: pausing until it is back");
            self.inner.outages.fetch_add(1, Ordering::AcqRel);
            self.inner.open.send_replace(false);
            tokio::spawn(self.clone().probe());
        }
        false
    }

    /// Whether the server answers: a ping that gets any answer but a gateway's or a loading server's
    /// (502, 503, 504) shows it reachable, even an error status or a garbled body; [`PINGS`] failures in a row
    /// (no connection, a reset, no answer in time, a gateway error) show it is not.
    async fn reachable(&self) -> bool {
        for _ in 0..PINGS {
            match self.inner.backend.ping().await {
                Ok(()) => return true,
                Err(e) if answered(&e) => return true,
                Err(_) => {}
            }
        }
        false
    }

    async fn probe(self) {
        let mut delay = Duration::from_millis(250);
        let down_since = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.inner.stop.cancelled() => return,
            }
            if self.reachable().await {
                tracing::warn!(
                    server = self.inner.backend.url(),
                    "server is back after {:.0}s: resuming (it rejoins the run)",
                    down_since.elapsed().as_secs_f64()
                );
                self.inner.open.send_replace(true);
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Whether a failed ping still shows the server there: it answered, other than as a gateway or a loading
/// server does.
fn answered(e: &BackendError) -> bool {
    match e {
        BackendError::Status { status, .. } => !matches!(status, 502..=504),
        BackendError::Malformed { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_answered_with_an_error_shows_the_server_there_but_a_gateway_error_does_not() {
        let status = |s| BackendError::Status { status: s, message: String::new(), body: None, retry_after: None };
        for s in [400, 401, 404, 429, 500] {
            assert!(answered(&status(s)), "{s}");
        }
        for s in [502, 503, 504] {
            assert!(!answered(&status(s)), "{s}");
        }
        assert!(answered(&BackendError::malformed("not json")));
        assert!(!answered(&BackendError::reset("reset by peer")));
        assert!(!answered(&BackendError::Timeout(Duration::from_secs(5))));
    }
}
