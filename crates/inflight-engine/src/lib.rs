//! inflight's embedded engine: a GGUF model run in-process on llama.cpp, with no server in between.
//!
//! One worker thread owns the llama.cpp contexts and runs continuous batching: every decode call carries one
//! token for each sequence that is generating and, in the room left, chunks of the prompts waiting to be
//! prefilled. A job starts as soon as a sequence and its KV cells are free, and frees them the moment it ends.
//! Callers (any number of async tasks) hand jobs in through [`Engine::generate`] and [`Engine::embed`]; how
//! many they keep in flight is how many sequences decode together, so the caller's concurrency controller
//! tunes the engine exactly as it tunes a server's lanes.
//!
//! Split: [`budget`] (KV cells and sequence ids), [`prefix`] (the shared prompt prefix) and [`topology`] (the
//! physical cores) are pure logic with their own tests; [`model`] loads and describes a GGUF file and renders
//! prompts; the worker drives llama.cpp.

mod budget;
mod chat;
mod error;
mod model;
mod prefix;
mod sample;
mod stats;
pub mod topology;
mod worker;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

pub use error::{JobError, LoadError};
pub use model::{cannot_pool, check_file, no_template, ModelInfo, Pooling};
pub use stats::{EngineStats, ThreadRate};

use model::Loaded;
use worker::{Command, Worker};

/// How the engine is set up. `Default` is what `inflight run --engine` uses with no other flags.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The GGUF file.
    pub model: PathBuf,
    /// Decode threads; `None` measures each count up to the physical cores and keeps the fastest.
    pub threads: Option<usize>,
    /// Sequences that can decode together (the most jobs in flight the caller may use).
    pub sequences: usize,
    /// The most tokens one job may use (prompt plus `max_tokens`); `None`: the model's training context.
    pub context: Option<u32>,
    /// KV cells shared by all sequences; `None`: enough for `sequences` jobs of the size the caller expects
    /// (see [`Engine::plan_kv`]), within the memory budget.
    pub kv_tokens: Option<u32>,
    /// Tokens per decode call (prefill chunks and decode tokens together).
    pub batch: u32,
    /// Layers offloaded to a GPU; `None`: as many as fit (0 without a GPU backend).
    pub gpu_layers: Option<u32>,
    /// Pooling for embeddings; `None`: the model's own.
    pub pooling: Option<Pooling>,
    /// Bytes the engine may use for its KV cache; `None`: half the memory available now.
    pub memory: Option<u64>,
}

impl EngineConfig {
    /// The defaults for `model`.
    pub fn new(model: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            model: model.into(),
            threads: None,
            sequences: 64,
            context: None,
            kv_tokens: None,
            batch: 512,
            gpu_layers: None,
            pooling: None,
            memory: None,
        }
    }
}

/// A chat message.
#[derive(Debug, Clone)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Messages, rendered with the model's own chat template.
    Chat(Vec<Message>),
    /// A raw prompt, tokenized as given.
    Text(String),
}

/// Sampling settings, as an OpenAI request carries them.
#[derive(Debug, Clone)]
pub struct Params {
    /// The most tokens to generate.
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// The sampler's seed; `None`: random.
    pub seed: Option<u32>,
    /// Generation stops before any of these.
    pub stop: Vec<String>,
    /// A JSON Schema the output must match (enforced by a llama.cpp grammar).
    pub json_schema: Option<String>,
}

impl Default for Params {
    fn default() -> Params {
        // llama-server's defaults where a request says nothing.
        Params { max_tokens: 256, temperature: 0.8, top_p: 0.95, seed: None, stop: Vec::new(), json_schema: None }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl Finish {
    /// The OpenAI `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The generated text (stop string excluded).
    pub text: String,
    /// Tokens of the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Why it ended.
    pub finish: Finish,
}

/// Finished embeddings, one vector per input, L2-normalized (as llama-server returns them).
#[derive(Debug, Clone)]
pub struct Embedded {
    /// One vector per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of all inputs.
    pub prompt_tokens: u32,
}

/// A loaded model and the worker thread that decodes for it.
pub struct Engine {
    loaded: Arc<Loaded>,
    tx: mpsc::Sender<Command>,
    stats: Arc<stats::Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Loads the model, measures the thread counts (unless fixed) and starts the worker. Blocking: call it
    /// from a blocking context.
    pub fn load(config: EngineConfig) -> Result<Engine, LoadError> {
        let loaded = Arc::new(Loaded::open(&config)?);
        let stats = Arc::new(stats::Shared::default());
        let (tx, rx) = mpsc::channel();
        let worker = Worker::start(loaded.clone(), config, stats.clone(), rx)?;
        Ok(Engine { loaded, tx, stats, worker: Some(worker) })
    }

    /// What the model is (name, context, pooling, chat template).
    pub fn model(&self) -> &ModelInfo {
        &self.loaded.info
    }

    /// The number of tokens `prompt` renders to, or why it cannot be rendered.
    pub fn count(&self, prompt: &Prompt) -> Result<u32, JobError> {
        Ok(self.loaded.tokens(prompt)?.len() as u32)
    }

    /// Sizes the KV cache for jobs that each need about `need` tokens (prompt plus `max_tokens`, measured by
    /// the caller from a sample with [`Engine::count`]). Takes effect before the first generation; later
    /// calls are ignored. Without it the cache is sized for jobs of 1,024 tokens.
    pub fn plan_kv(&self, need: u32) {
        let _ = self.tx.send(Command::PlanKv(need));
    }

    /// Generates for one prompt; waits for the whole answer.
    pub async fn generate(&self, prompt: Prompt, params: Params) -> Result<Generated, JobError> {
        let tokens = self.loaded.tokens(&prompt)?;
        let sampler = sample::Settings::new(&params)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = worker::GenJob { tokens, params, sampler, reply };
        self.tx.send(Command::Generate(Box::new(job))).map_err(|_| JobError::Closed)?;
        answer.await.map_err(|_| JobError::Closed)?
    }

    /// Embeds each input; waits for all of them.
    pub async fn embed(&self, inputs: Vec<String>) -> Result<Embedded, JobError> {
        if inputs.is_empty() {
            return Err(JobError::Invalid("no input to embed".into()));
        }
        self.loaded.can_pool()?;
        let tokens = inputs.iter().map(|t| self.loaded.embed_tokens(t)).collect::<Result<Vec<_>, _>>()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Command::Embed(Box::new(worker::EmbedJob { inputs: tokens, reply })))
            .map_err(|_| JobError::Closed)?;
        answer.await.map_err(|_| JobError::Closed)?
    }

    /// What the engine chose and has counted so far.
    pub fn stats(&self) -> EngineStats {
        self.stats.snapshot()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
