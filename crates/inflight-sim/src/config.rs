//! Simulator configuration: which API to speak, the performance model's
//! knobs, faults to inject, and server-level settings (port, seed, auth).
//!
//! Every duration of the performance model is in *simulated* time; only
//! [`SimConfig::with_stall_for`] is in wall time, because a stall exists to
//! trip the client's wall-clock timeout.

use std::time::Duration;

use crate::profile::Profile;

/// Which server API the simulator speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// OpenAI-compatible, like llama-server or vLLM (`/v1/...`).
    #[default]
    #[value(name = "openai")]
    OpenAi,
    /// Ollama's native API (`/api/...`).
    Ollama,
}

/// How many tokens a request would generate if `max_tokens` did not cut it.
#[derive(Clone, Debug, PartialEq)]
pub enum LengthDist {
    /// Always this many tokens.
    Fixed(u32),
    /// Uniform over `min..=max`.
    Uniform {
        /// Shortest draw.
        min: u32,
        /// Longest draw.
        max: u32,
    },
    /// Mostly short answers with a tail of long ones.
    Bimodal {
        /// Uniform range of the common, short answers.
        short: (u32, u32),
        /// Uniform range of the rare, long answers.
        long: (u32, u32),
        /// Probability of drawing from `long`.
        long_fraction: f64,
    },
}

impl LengthDist {
    /// Draws one length.
    pub fn draw(&self, rng: &mut impl rand::Rng) -> u32 {
        let uniform =
            |rng: &mut dyn rand::RngCore, (lo, hi): (u32, u32)| rand::Rng::random_range(rng, lo.min(hi)..=hi.max(lo));
        match *self {
            LengthDist::Fixed(n) => n,
            LengthDist::Uniform { min, max } => uniform(rng, (min, max)),
            LengthDist::Bimodal { short, long, long_fraction } => {
                if rng.random::<f64>() < long_fraction {
                    uniform(rng, long)
                } else {
                    uniform(rng, short)
                }
            }
        }
    }
}

/// Fault injection probabilities, drawn once per request attempt.
///
/// The kinds are mutually exclusive: one uniform draw is compared with the
/// cumulative probabilities in field order, so their sum should stay <= 1.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// HTTP 500 with a JSON error body.
    pub error_500: f64,
    /// HTTP 503 with `Retry-After: 1`.
    pub error_503_retry_after: f64,
    /// The TCP connection is reset without any response.
    pub reset: f64,
    /// The request is held for `stall_for` (wall time) before being served.
    pub stall: f64,
    /// Headers promise more bytes than are sent, then the connection closes.
    pub truncated: f64,
    /// At most this many faults for one request (identified by a hash of its
    /// body), so retrying clients always get through; 0 means no limit.
    pub max_per_request: u32,
}

impl Faults {
    /// Whether any fault can ever fire (lets the hot path skip the bookkeeping).
    pub fn any(&self) -> bool {
        self.error_500 + self.error_503_retry_after + self.reset + self.stall + self.truncated > 0.0
    }
}

/// Everything the simulated server needs; build it from [`SimConfig::default`]
/// or [`SimConfig::profile`] and refine it with the `with_*` methods.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub(crate) api: Api,
    pub(crate) port: u16,
    pub(crate) seed: u64,
    pub(crate) time_scale: f64,
    pub(crate) faults: Faults,
    pub(crate) stall_for: Duration,
    pub(crate) missing_models: Vec<String>,
    pub(crate) models: Vec<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) zero_latency: bool,
    pub(crate) lanes: usize,
    pub(crate) base_step: Duration,
    pub(crate) per_request_step: Duration,
    pub(crate) knee: u32,
    pub(crate) prefill_per_token: Duration,
    pub(crate) lengths: LengthDist,
    pub(crate) max_queue: Option<usize>,
    pub(crate) warmup_requests: u32,
    pub(crate) warmup_factor: f64,
    pub(crate) drift_after: Option<Duration>,
    pub(crate) drift_factor: f64,
    pub(crate) load_time: Duration,
    pub(crate) max_loaded_models: usize,
    pub(crate) keep_alive: Duration,
    pub(crate) json_answers: Option<f64>,
    pub(crate) embed_cost: Option<(Duration, Duration)>,
    pub(crate) embed_max_inputs: Option<usize>,
    pub(crate) embed_context: Option<u32>,
}

impl Default for SimConfig {
    /// The [`Profile::Lanes4`] server speaking the OpenAI API on an ephemeral port.
    fn default() -> Self {
        SimConfig {
            api: Api::OpenAi,
            port: 0,
            seed: 0,
            time_scale: 1.0,
            faults: Faults::default(),
            stall_for: Duration::from_secs(60),
            missing_models: Vec::new(),
            models: vec!["sim-model".to_string()],
            api_key: None,
            zero_latency: false,
            lanes: 4,
            base_step: Duration::from_millis(2),
            per_request_step: Duration::ZERO,
            knee: 4,
            prefill_per_token: Duration::from_micros(100),
            lengths: LengthDist::Fixed(64),
            max_queue: None,
            warmup_requests: 0,
            warmup_factor: 1.0,
            drift_after: None,
            drift_factor: 1.0,
            load_time: Duration::from_millis(500),
            max_loaded_models: 3,
            keep_alive: Duration::from_secs(300),
            json_answers: None,
            embed_cost: None,
            embed_max_inputs: None,
            embed_context: None,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident, $field:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, $field: $ty) -> Self {
            self.$field = $field;
            self
        }
    };
}

impl SimConfig {
    /// The settings of a named profile (see [`Profile`] for the table).
    pub fn profile(p: Profile) -> Self {
        p.apply(SimConfig::default())
    }

    /// Answers every request at once with a fixed short completion, skipping
    /// the performance model: for measuring a client's own overhead.
    pub fn zero_latency() -> Self {
        SimConfig { zero_latency: true, ..SimConfig::default() }
    }

    /// Whether this configuration skips the performance model.
    pub fn is_zero_latency(&self) -> bool {
        self.zero_latency
    }

    setter!(
        /// Which API to speak (default OpenAI).
        with_api, api: Api
    );
    setter!(
        /// Port to bind on 127.0.0.1; 0 (default) picks an ephemeral one.
        with_port, port: u16
    );
    setter!(
        /// Seed of every random draw (output lengths, faults).
        with_seed, seed: u64
    );
    setter!(
        /// Faults to inject.
        with_faults, faults: Faults
    );
    setter!(
        /// Wall time a stalled request is held before it is served (default 60 s).
        with_stall_for, stall_for: Duration
    );
    setter!(
        /// Model names that answer "model not found".
        with_missing_models, missing_models: Vec<String>
    );
    setter!(
        /// Model names listed by `/v1/models` and `/api/tags` (default `sim-model`).
        with_models, models: Vec<String>
    );
    setter!(
        /// When set, every request must carry `Authorization: Bearer KEY`.
        with_api_key, api_key: Option<String>
    );
    setter!(
        /// Requests decoded together per model (llama-server slots, OLLAMA_NUM_PARALLEL).
        with_lanes, lanes: usize
    );
    setter!(
        /// Duration of one decode step for a small batch.
        with_base_step, base_step: Duration
    );
    setter!(
        /// Extra step duration per active request, so per-request speed degrades gently.
        with_per_request_step, per_request_step: Duration
    );
    setter!(
        /// Batch size beyond which a step grows linearly with the batch.
        with_knee, knee: u32
    );
    setter!(
        /// Prompt processing cost per prompt token, paid once when a request joins.
        with_prefill_per_token, prefill_per_token: Duration
    );
    setter!(
        /// Output length distribution (before `max_tokens` cuts it).
        with_lengths, lengths: LengthDist
    );
    setter!(
        /// Bound on requests waiting for a lane; beyond it the server answers 503.
        /// `None` is unbounded in OpenAI mode and Ollama's 512 in Ollama mode.
        with_max_queue, max_queue: Option<usize>
    );
    setter!(
        /// Number of first completed requests during which steps are `warmup_factor` slower.
        with_warmup_requests, warmup_requests: u32
    );
    setter!(
        /// Step slowdown while warming up.
        with_warmup_factor, warmup_factor: f64
    );
    setter!(
        /// Simulated uptime after which steps become `drift_factor` slower.
        with_drift_after, drift_after: Option<Duration>
    );
    setter!(
        /// Step slowdown after `drift_after`.
        with_drift_factor, drift_factor: f64
    );
    setter!(
        /// Time to load a model (Ollama mode).
        with_load_time, load_time: Duration
    );
    setter!(
        /// Models kept loaded at once before the least recently used idle one is evicted (Ollama mode).
        with_max_loaded_models, max_loaded_models: usize
    );
    setter!(
        /// Keep-alive of a request that does not name one (Ollama mode, default 5 min).
        with_keep_alive, keep_alive: Duration
    );

    /// Answers (not streamed) are the JSON object `{"answer": TEXT}` whatever schema the request asks for, like a
    /// server that ignores `format`/`response_format`; a share `invalid` of request bodies (drawn from the seed and
    /// the body, so a retry with another seed draws again) get it cut short: invalid JSON.
    pub fn with_json_answers(mut self, invalid: f64) -> Self {
        self.json_answers = Some(invalid.clamp(0.0, 1.0));
        self
    }

    /// An embedding request costs `overhead + inputs × per_input` of simulated time, instead of its prompt
    /// tokens' prefill: a server whose per-request work (HTTP, JSON, scheduling) is paid once however many inputs
    /// a request carries, so packing inputs pays by a known amount.
    pub fn with_embed_cost(mut self, overhead: Duration, per_input: Duration) -> Self {
        self.embed_cost = Some((overhead, per_input));
        self
    }

    setter!(
        /// The most inputs one embedding request may carry; more are refused whole with 413, as TEI refuses a
        /// batch above its `--max-client-batch-size`.
        with_embed_max_inputs, embed_max_inputs: Option<usize>
    );
    setter!(
        /// The most tokens (estimated, 4 bytes each) one embedding input may have; a request with a longer input is
        /// refused whole with 400 `exceed_context_size_error`, as llama-server refuses an input over its context.
        with_embed_context, embed_context: Option<u32>
    );

    /// Simulated time runs `s` times faster than wall time (default 1).
    pub fn with_time_scale(mut self, s: f64) -> Self {
        assert!(s.is_finite() && s > 0.0, "time scale must be positive");
        self.time_scale = s;
        self
    }

    /// The API this configuration speaks.
    pub fn api(&self) -> Api {
        self.api
    }

    /// The configured lane count.
    pub fn lanes(&self) -> usize {
        self.lanes
    }
}
