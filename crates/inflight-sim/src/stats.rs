//! Counters of what the simulated server saw, for tests to assert on (in-process, or over HTTP at
//! `/sim/stats` for benchmark scripts that run the simulator's binary).

use std::sync::atomic::AtomicU64;

/// A snapshot of what the server has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimStats {
    /// Inference requests received (every attempt, whatever its outcome).
    pub requests: u64,
    /// Requests answered successfully.
    pub ok: u64,
    /// Injected HTTP 500s.
    pub error_500: u64,
    /// Injected HTTP 503s with `Retry-After`.
    pub error_503_retry_after: u64,
    /// Injected connection resets.
    pub reset: u64,
    /// Injected stalls.
    pub stall: u64,
    /// Injected truncated responses.
    pub truncated: u64,
    /// Requests for a missing model.
    pub not_found: u64,
    /// Requests rejected because the queue was full.
    pub busy_503: u64,
    /// Requests with an unparsable body.
    pub bad_request: u64,
    /// Requests without the right API key.
    pub unauthorized: u64,
    /// Most inference requests in flight at once.
    pub max_in_flight: u64,
    /// Tokens generated for successful requests.
    pub completion_tokens: u64,
    /// Model loads, reloads included (Ollama mode).
    pub model_loads: u64,
    /// Answers sent as invalid JSON (see `SimConfig::with_json_answers`).
    pub invalid_json: u64,
    /// Inputs embedded by successful embedding requests (a request may carry several).
    pub embed_inputs: u64,
}

/// Live counters behind [`SimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub error_500: AtomicU64,
    pub error_503: AtomicU64,
    pub reset: AtomicU64,
    pub stall: AtomicU64,
    pub truncated: AtomicU64,
    pub not_found: AtomicU64,
    pub busy_503: AtomicU64,
    pub bad_request: AtomicU64,
    pub unauthorized: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub invalid_json: AtomicU64,
    pub embed_inputs: AtomicU64,
}
