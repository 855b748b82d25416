//! Fault injection: which attempt of which request fails, and how a
//! truncated response is put on the wire.
//!
//! A request is identified by a hash of its body (less llama-server's `id_slot`,
//! which says where it runs, not what it asks), so the `n`-th attempt of a
//! given request draws the same fault in every run (the draw is seeded by the
//! server seed, the body hash and the attempt number), whatever other
//! requests are doing concurrently.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use rand::{Rng, SeedableRng};

use crate::config::Faults;
use crate::wire::{hash, mix};

/// One kind of injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Error500,
    Error503,
    Reset,
    Stall,
    Truncated,
}

impl Faults {
    /// Each kind with its probability, in the order the draw compares them.
    fn kinds(&self) -> Vec<(f64, Fault)> {
        vec![
            (self.error_500, Fault::Error500),
            (self.error_503_retry_after, Fault::Error503),
            (self.reset, Fault::Reset),
            (self.stall, Fault::Stall),
            (self.truncated, Fault::Truncated),
        ]
    }

    /// The simulator's plan for these faults.
    pub(crate) fn plan(&self, seed: u64) -> FaultPlan<Fault> {
        FaultPlan::new(self.kinds(), self.max_per_request, seed)
    }
}

/// Decides the fault, if any, of each request attempt, among kinds `K` (the simulator's, the fault proxy's).
#[derive(Debug)]
pub(crate) struct FaultPlan<K> {
    /// Each kind and its probability; mutually exclusive, compared in order with one uniform draw.
    kinds: Vec<(f64, K)>,
    /// At most this many faults for one request; 0 means no limit.
    max_per_request: u32,
    seed: u64,
    /// Body hash -> (attempts seen, faults injected).
    seen: Mutex<HashMap<u64, (u32, u32)>>,
}

impl<K: Copy> FaultPlan<K> {
    /// A plan drawing among `kinds` with `seed`.
    pub fn new(kinds: Vec<(f64, K)>, max_per_request: u32, seed: u64) -> Self {
        let kinds = kinds.into_iter().filter(|(p, _)| *p > 0.0).collect();
        FaultPlan { kinds, max_per_request, seed, seen: Mutex::new(HashMap::new()) }
    }

    /// The fault of this attempt of the request with this body.
    pub fn draw(&self, body: &[u8]) -> Option<K> {
        if self.kinds.is_empty() {
            return None;
        }
        let key = identity(body);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (attempts, injected) = seen.entry(key).or_default();
        *attempts += 1;
        let cap = self.max_per_request;
        if cap != 0 && *injected >= cap {
            return None;
        }
        let mut rng = rand::rngs::SmallRng::seed_from_u64(mix(mix(self.seed, key), u64::from(*attempts)));
        let roll: f64 = rng.random();
        let mut edge = 0.0;
        for &(p, kind) in &self.kinds {
            edge += p;
            if roll < edge {
                *injected += 1;
                return Some(kind);
            }
        }
        None
    }
}

/// Promises all of `full` in `Content-Length`, sends half of it, then fails
/// the body so the server closes the connection mid-message.
pub(crate) fn truncated(full: Vec<u8>, content_type: &'static str) -> Response {
    let len = full.len();
    let mut full = Bytes::from(full);
    let head = full.split_to(len / 2);
    let chunks = futures_util::stream::unfold(Some(head), |head| async move {
        match head {
            Some(bytes) => Some((Ok::<_, std::io::Error>(bytes), None)),
            None => {
                // Give the connection time to flush the half that was sent,
                // otherwise the error could discard it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Err(std::io::Error::other("simulated truncation")), None))
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(chunks));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    resp
}

/// A request's identity: its body's hash, without `id_slot` where it names one.
fn identity(body: &[u8]) -> u64 {
    if body.windows(9).any(|w| w == b"\"id_slot\"") {
        if let Ok(serde_json::Value::Object(mut v)) = serde_json::from_slice(body) {
            v.remove("id_slot");
            return hash(serde_json::Value::Object(v).to_string().as_bytes());
        }
    }
    hash(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_run_on_another_slot_is_the_same_request() {
        assert_eq!(identity(br#"{"id_slot":1,"prompt":"a"}"#), identity(br#"{"id_slot":3,"prompt":"a"}"#));
        assert_ne!(identity(br#"{"id_slot":1,"prompt":"a"}"#), identity(br#"{"id_slot":1,"prompt":"b"}"#));
    }

    #[test]
    fn faults_stop_after_max_per_request_and_repeat_by_seed() {
        let faults = Faults { error_500: 0.5, reset: 0.5, max_per_request: 2, ..Faults::default() };
        let plan = faults.plan(7);
        let draws: Vec<_> = (0..5).map(|_| plan.draw(b"job-1")).collect();
        assert_eq!(draws.iter().filter(|d| d.is_some()).count(), 2);
        assert!(draws[2..].iter().all(Option::is_none));
        let again = faults.plan(7);
        let redraw: Vec<_> = (0..5).map(|_| again.draw(b"job-1")).collect();
        assert_eq!(draws, redraw);
    }

    #[test]
    fn no_faults_configured_means_none_drawn() {
        let plan = Faults::default().plan(1);
        assert!((0..100).all(|i| plan.draw(format!("{i}").as_bytes()).is_none()));
    }
}
