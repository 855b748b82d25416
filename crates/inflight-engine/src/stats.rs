//! What the engine chose and what it counted, shared between the worker and its callers.

use std::sync::Mutex;
use std::time::Duration;

/// One measured thread count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThreadRate {
    /// Threads.
    pub threads: usize,
    /// Tokens per second of the calibration batch.
    pub tokens_per_s: f64,
}

/// A snapshot of the engine's choices and counters.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Decode threads in use.
    pub threads: usize,
    /// The physical cores seen (the ceiling for `threads`).
    pub physical_cores: usize,
    /// Each thread count measured at start (empty when fixed by the caller).
    pub thread_rates: Vec<ThreadRate>,
    /// Sequences that can decode together.
    pub sequences: usize,
    /// Tokens per decode call.
    pub batch: u32,
    /// KV cells of the generation context (0 until it exists).
    pub kv_tokens: u32,
    /// The most tokens one job may use.
    pub context: u32,
    /// Layers on a GPU.
    pub gpu_layers: u32,
    /// Jobs answered (generations and embedding requests).
    pub jobs: u64,
    /// Tokens of the longest shared prefix found.
    pub prefix_tokens: u32,
    /// Prompt tokens prefilled (computed).
    pub prefill_tokens: u64,
    /// Prompt tokens not computed because a shared prefix's KV cells were copied.
    pub prefix_saved_tokens: u64,
    /// Prompt tokens not computed because the job's sequence still held them from its previous job.
    pub kept_tokens: u64,
    /// Tokens generated.
    pub decode_tokens: u64,
    /// Tokens embedded.
    pub embed_tokens: u64,
    /// The most sequences (or embedding inputs) seen in one decode call.
    pub max_batch_sequences: usize,
    /// Decode calls.
    pub decode_calls: u64,
    /// Time in decode calls, split by the share of prompt tokens in each call.
    pub prefill_time: Duration,
    /// Time in decode calls, the generated tokens' share.
    pub decode_time: Duration,
    /// Time in embedding decode calls.
    pub embed_time: Duration,
    /// Time sampling.
    pub sample_time: Duration,
    /// Time the worker waited with nothing to do.
    pub idle_time: Duration,
}

/// The worker writes, callers read.
#[derive(Debug, Default)]
pub(crate) struct Shared(Mutex<EngineStats>);

impl Shared {
    pub(crate) fn update(&self, f: impl FnOnce(&mut EngineStats)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn snapshot(&self) -> EngineStats {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
