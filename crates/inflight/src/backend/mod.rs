//! Backends: how one request reaches a server, and what comes back.
//!
//! Jobs are stored OpenAI-shaped; each backend translates to its server's wire format and translates answers
//! back, so the dispatcher, the store and the output files see one shape whatever the server.

mod busy;
mod detect;
#[cfg(feature = "engine")]
mod engine;
#[cfg(feature = "engine")]
mod engine_pool;
mod error;
mod gather;
mod getter;
mod http;
mod key;
mod lanes;
mod ollama;
mod openai;
mod pack;
#[cfg(test)]
mod proptests;
mod stream;

pub use busy::{metric, BusyCount, BusySampler};
pub(crate) use detect::normalize;
pub use detect::{connect, ConnectError, ConnectOptions, Connection, DEFAULT_PORTS};
#[cfg(feature = "engine")]
pub use engine::EngineBackend;
#[cfg(feature = "engine")]
pub use engine_pool::{default_budget, EnginePool};
pub use error::BackendError;
pub use getter::Getter;
pub use key::ApiKey;
pub use lanes::{LaneFix, LaneSetting, LLAMA_CONTEXT, LLAMA_SLOTS, SUGGESTED_LANES};
pub use ollama::OllamaBackend;
pub use openai::OpenAiBackend;
pub use pack::{pack_key, split_answer, InputsPerRequest, PackReport, PackingBackend, AUTO_MAX_INPUTS};
pub use stream::{ServerTimings, Streamed, TokenClock};

/// The answer parsers by themselves, for the fuzz targets in `fuzz/`: not an API.
#[doc(hidden)]
pub mod parse {
    pub use super::ollama::{answer_of as ollama_answer, from_ollama, to_ollama};
    pub use super::openai::answer_of as openai_answer;
}

use std::time::Duration;

use async_trait::async_trait;

use crate::job::Endpoint;

/// Which API a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// The OpenAI-compatible API (llama-server, vLLM, LM Studio, SGLang).
    Openai,
    /// Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`).
    Ollama,
}

/// A successful answer, translated to the OpenAI shape.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status (2xx).
    pub status_code: u16,
    /// The server's request id, when it sends one.
    pub request_id: Option<String>,
    /// The answer body as OpenAI-shaped JSON text.
    pub body: String,
    /// Prompt tokens, when the server reports them.
    pub prompt_tokens: Option<i64>,
    /// Completion tokens, when the server reports them.
    pub completion_tokens: Option<i64>,
    /// Prompt tokens the server took from its prefix cache instead of computing, when it says (llama-server's
    /// `timings.cache_n`, `usage.prompt_tokens_details.cached_tokens` of OpenAI-compatible servers).
    pub cached_tokens: Option<i64>,
    /// Why generation stopped (`stop`, `length`).
    pub finish_reason: Option<String>,
    /// Time from sending to the response headers.
    pub first_byte: Option<Duration>,
    /// Time the model took to load for this request, where the backend says (Ollama's `load_duration`, an
    /// engine model loaded on demand): the workflow scheduler measures a model switch by it.
    pub load: Option<Duration>,
}

/// What a server says about itself.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    /// Models the server lists (may be empty: llama-server lists only its one model).
    pub models: Vec<String>,
    /// A short description, e.g. `ollama 0.12.0` or `openai-compatible`.
    pub description: String,
    /// Which server software it is, as far as it can be told.
    pub kind: ServerKind,
    /// The model's identity where the server reports one (llama-server's model file, Ollama's digests, the
    /// engine's GGUF file): the response cache keys answers by it, so a model replaced under the same name does
    /// not answer from the old one's cache.
    pub identity: Option<String>,
    /// The models loaded now, where the server tells them apart from those it only lists (Ollama's `/api/ps`, a
    /// llama-server router's `status`); `None` where every model it lists is served as it is.
    pub loaded: Option<Vec<String>>,
}

/// Whether a server's name for a model, as it lists it, is `model` as a request names it (Ollama's `:latest` tag
/// is implied).
pub fn names_model(listed: &str, model: &str) -> bool {
    listed == model || listed.strip_suffix(":latest") == Some(model)
}

/// Which server software answers, as far as its API tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerKind {
    /// Ollama (native API).
    Ollama,
    /// llama.cpp's llama-server (`/props` answers), with its number of slots.
    LlamaServer {
        /// `total_slots` from `/props`; in router mode, the `--parallel` its models are started with.
        slots: Option<u64>,
    },
    /// vLLM (`owned_by: vllm`).
    Vllm,
    /// LM Studio.
    LmStudio,
    /// inflight's embedded llama.cpp engine (`--engine`), with the sequences it can decode together.
    Engine {
        /// Sequences that can decode together.
        sequences: usize,
    },
    /// An OpenAI-compatible server we cannot tell apart.
    #[default]
    Unknown,
}

impl ServerKind {
    /// Where a concurrency controller starts on this server: its lanes, or the engine's sequences (both run
    /// that many requests together by design), else `None` (from 1).
    pub fn start_level(self) -> Option<usize> {
        self.lanes().or(self.capacity())
    }

    /// The highest level worth trying here, given `--max-concurrency`.
    pub fn ceiling(self, max_concurrency: usize) -> usize {
        self.capacity().map_or(max_concurrency, |c| c.min(max_concurrency))
    }

    /// The most requests worth sending at once, where more could only queue: the engine's sequences.
    pub fn capacity(self) -> Option<usize> {
        match self {
            ServerKind::Engine { sequences } => Some(sequences),
            _ => None,
        }
    }

    /// The requests the server says it runs at once, where it says so (llama-server's slots).
    pub fn lanes(self) -> Option<usize> {
        match self {
            ServerKind::LlamaServer { slots: Some(n) } if n > 0 => Some(n as usize),
            _ => None,
        }
    }
}

/// One inference server.
///
/// Contract: [`Backend::send`] returns `Ok` only for a 2xx answer whose body is valid JSON of the endpoint's
/// shape; every other outcome is a [`BackendError`] that says whether trying again may help.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Sends one request (an OpenAI-shaped `body` for `endpoint`) and waits for the whole answer.
    async fn send(&self, endpoint: Endpoint, body: &str) -> Result<Answer, BackendError>;
    /// Sends one chat or completion request with streaming on and times its tokens (see [`Streamed`]); the
    /// content itself is not kept. Embeddings do not stream: use [`Backend::send`].
    async fn stream(&self, endpoint: Endpoint, body: &str) -> Result<Streamed, BackendError>;
    /// The server's Prometheus `/metrics` text, where it serves one (llama-server with `--metrics`, vLLM).
    async fn metrics(&self) -> Option<String>;
    /// What the server says about itself and its models; fails if it does not answer.
    async fn probe(&self) -> Result<ServerInfo, BackendError>;
    /// The cheapest request that proves the server is up (used to end a pause).
    async fn ping(&self) -> Result<(), BackendError>;
    /// The API this backend speaks.
    fn api(&self) -> Api;
    /// The server's base URL.
    fn url(&self) -> &str;
    /// What a packing layer ([`PackingBackend`]) did so far, for the summary; `None` for a backend that does
    /// not pack embedding inputs.
    fn packing(&self) -> Option<PackReport> {
        None
    }
}

/// Extracts token counts and the finish reason from an OpenAI-shaped answer.
/// The prompt tokens a server says it took from its prefix cache (see [`Answer::cached_tokens`]).
pub(crate) fn cached_of(body: &serde_json::Value) -> Option<i64> {
    body["timings"]["cache_n"].as_i64().or_else(|| body["usage"]["prompt_tokens_details"]["cached_tokens"].as_i64())
}

pub(crate) fn usage_of(body: &serde_json::Value) -> (Option<i64>, Option<i64>, Option<String>) {
    let usage = &body["usage"];
    let finish = body["choices"][0]["finish_reason"].as_str().map(str::to_owned);
    (usage["prompt_tokens"].as_i64(), usage["completion_tokens"].as_i64(), finish)
}
