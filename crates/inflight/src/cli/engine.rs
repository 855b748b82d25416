//! `--engine MODEL.gguf` and its settings (run and bench): the embedded llama.cpp engine instead of a server.
//! Everything here has a measured or sized default; the flags are for pinning a choice.

use std::path::PathBuf;
use std::sync::Arc;

use super::common::{setup_error, ServerArgs};
use super::parse;
use crate::backend::{connect, ConnectOptions, Connection};

/// The engine's flags. The settings apply to `--engine`'s model, and in a workflow to every step whose model
/// is a GGUF file.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Embedded engine (no server)")]
pub struct EngineArgs {
    /// Run on this GGUF model in-process (llama.cpp), with no server: inflight picks the threads by
    /// measuring, decodes as many sequences together as the concurrency says, and sizes the KV cache from
    /// the jobs. `run` takes it beside --server URLs too: the engine is then one more server of the run.
    /// (In a workflow, name GGUF files in the steps' `model:` instead.)
    #[arg(long, value_name = "MODEL.gguf")]
    pub engine: Option<PathBuf>,
    /// Decode threads. Default: each count up to the physical cores is measured and the fastest kept.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub engine_threads: Option<u64>,
    /// Sequences the engine can decode together (the most jobs in flight). Default: --max-concurrency,
    /// at most 64.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub engine_sequences: Option<u64>,
    /// The most tokens one job may use, prompt plus max_tokens. Default: the model's training context.
    /// Longer jobs fail with `context_length_exceeded`.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(16..))]
    pub engine_context: Option<u32>,
    /// Tokens per decode call (prompt chunks and generated tokens together). Default: 512.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(32..=8192))]
    pub engine_batch: Option<u32>,
    /// Memory the engine's models and KV caches may take (e.g. `6G`, `800M`). Default: the memory available,
    /// less a margin. A workflow keeps as many of its GGUF models loaded as fit, and loads the others in turn.
    #[arg(long, value_name = "BYTES", value_parser = parse::bytes)]
    pub engine_memory: Option<u64>,
    /// Model layers on the GPU: `auto` (as many as fit; none without a GPU build) or a number.
    #[arg(long, value_name = "auto|N", value_parser = gpu_layers)]
    pub gpu_layers: Option<GpuLayers>,
    /// How embeddings pool token vectors. Default: the model's own (models made for chat have none).
    #[arg(long, value_enum)]
    pub pooling: Option<PoolingArg>,
}

impl EngineArgs {
    /// The first engine setting given, for the error when nothing runs on the engine.
    pub fn setting_given(&self) -> Option<&'static str> {
        let given = [
            ("--engine-threads", self.engine_threads.is_some()),
            ("--engine-sequences", self.engine_sequences.is_some()),
            ("--engine-context", self.engine_context.is_some()),
            ("--engine-batch", self.engine_batch.is_some()),
            ("--engine-memory", self.engine_memory.is_some()),
            ("--gpu-layers", self.gpu_layers.is_some()),
            ("--pooling", self.pooling.is_some()),
        ];
        given.iter().find(|(_, set)| *set).map(|(flag, _)| *flag)
    }

    /// The engine's configuration for `model` with these settings; `max_concurrency` bounds the sequences.
    #[cfg(feature = "engine")]
    pub fn config(&self, model: &std::path::Path, max_concurrency: u64) -> inflight_engine::EngineConfig {
        use inflight_engine::Pooling;
        let mut config = inflight_engine::EngineConfig::new(model);
        config.threads = self.engine_threads.map(|n| n as usize);
        config.sequences = self.engine_sequences.unwrap_or(max_concurrency.min(64)) as usize;
        config.context = self.engine_context;
        config.batch = self.engine_batch.unwrap_or(config.batch);
        config.gpu_layers = match self.gpu_layers {
            None | Some(GpuLayers::Auto) => None,
            Some(GpuLayers::Count(n)) => Some(n),
        };
        config.pooling = self.pooling.map(|p| match p {
            PoolingArg::Mean => Pooling::Mean,
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::Last => Pooling::Last,
        });
        // What the weights leave of --engine-memory is the KV cache's.
        let weights = std::fs::metadata(model).map(|m| m.len()).unwrap_or(0);
        config.memory = self.engine_memory.map(|m| m.saturating_sub(weights));
        config
    }
}

/// `--gpu-layers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    /// As many as fit.
    Auto,
    /// This many.
    Count(u32),
}

fn gpu_layers(s: &str) -> Result<GpuLayers, String> {
    match s {
        "auto" => Ok(GpuLayers::Auto),
        n => n.parse().map(GpuLayers::Count).map_err(|_| format!("expected `auto` or a number of layers, got {n:?}")),
    }
}

/// `--pooling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolingArg {
    /// The mean of the token vectors.
    Mean,
    /// The first token's vector.
    Cls,
    /// The last token's vector.
    Last,
}

/// The engine, kept beside its `Connection` for what only the engine has (sizing, its summary line).
#[cfg(feature = "engine")]
pub type EngineHandle = Arc<crate::backend::EngineBackend>;
/// Without the `engine` feature there is no engine to hold.
#[cfg(not(feature = "engine"))]
pub type EngineHandle = Arc<std::convert::Infallible>;

/// The backend a command runs on: the engine when `--engine` is given, else the server found by `conn`.
/// `max_concurrency` bounds the engine's sequences.
pub async fn open(
    conn: &ServerArgs,
    engine: &EngineArgs,
    opts: &ConnectOptions,
    max_concurrency: u64,
) -> anyhow::Result<(Connection, Option<EngineHandle>)> {
    match &engine.engine {
        None => {
            if let Some(flag) = engine.setting_given() {
                return Err(setup_error(format!("{flag} is an engine setting: it needs --engine MODEL.gguf")));
            }
            let c = connect(conn.single()?, conn.api, opts).await.map_err(|e| setup_error(e.to_string()))?;
            Ok((c, None))
        }
        Some(_) if !conn.server.is_empty() || conn.servers_file.is_some() => {
            Err(setup_error("--engine and --server together: only `run` sends to both; give this command one"))
        }
        Some(model) => load(model, engine, max_concurrency).await,
    }
}

#[cfg(feature = "engine")]
async fn load(
    model: &std::path::Path,
    args: &EngineArgs,
    max_concurrency: u64,
) -> anyhow::Result<(Connection, Option<EngineHandle>)> {
    use crate::backend::{Backend, EngineBackend};
    let config = args.config(model, max_concurrency);
    let engine = Arc::new(EngineBackend::load(config).await.map_err(setup_error)?);
    let info = engine.probe().await.map_err(|e| setup_error(e.to_string()))?;
    let backend: Arc<dyn Backend> = engine.clone();
    Ok((Connection { backend, info }, Some(engine)))
}

#[cfg(not(feature = "engine"))]
async fn load(
    model: &std::path::Path,
    _args: &EngineArgs,
    _max_concurrency: u64,
) -> anyhow::Result<(Connection, Option<EngineHandle>)> {
    Err(setup_error(format!(
        "--engine {}: this inflight was built without its engine (cargo feature `engine`); rebuild with it, or run \
         a server and pass --server",
        model.display()
    )))
}

/// The engine's decode threads and the physical cores it saw (the ceiling of `bench --engine`'s thread sweep).
#[cfg(feature = "engine")]
pub fn threads(engine: &EngineHandle) -> (usize, usize) {
    let s = engine.stats();
    (s.threads, s.physical_cores)
}

/// Without the engine there are no threads to count.
#[cfg(not(feature = "engine"))]
pub fn threads(engine: &EngineHandle) -> (usize, usize) {
    match **engine {}
}

/// How many pending jobs the engine is sized from.
pub const PLAN_SAMPLE: usize = 256;

/// Sizes the engine for the jobs about to run (a sample of the pending ones) and refuses, before anything is
/// sent, jobs this model cannot do at all.
#[cfg(feature = "engine")]
pub fn plan(engine: &EngineHandle, sample: &[crate::store::PendingJob]) -> anyhow::Result<()> {
    let bodies: Vec<(crate::job::Endpoint, &str)> = sample.iter().map(|j| (j.endpoint, j.body.as_str())).collect();
    engine.plan(&bodies).map_err(setup_error)
}

/// Without the engine there is nothing to size.
#[cfg(not(feature = "engine"))]
pub fn plan(engine: &EngineHandle, _sample: &[crate::store::PendingJob]) -> anyhow::Result<()> {
    match **engine {}
}

/// What the engine chose and measured, for the run's summary.
#[cfg(feature = "engine")]
pub fn report(engine: &EngineHandle) -> crate::report::EngineReport {
    use crate::report::{EngineReport, ThreadRateReport};
    let s = engine.stats();
    EngineReport {
        threads: s.threads,
        physical_cores: s.physical_cores,
        thread_rates: s
            .thread_rates
            .iter()
            .map(|r| ThreadRateReport { threads: r.threads, tokens_per_s: r.tokens_per_s })
            .collect(),
        sequences: s.sequences,
        max_batch_sequences: s.max_batch_sequences,
        batch: s.batch,
        kv_tokens: s.kv_tokens,
        context: s.context,
        gpu_layers: s.gpu_layers,
        jobs: s.jobs,
        prefix_tokens: s.prefix_tokens,
        prefill_tokens: s.prefill_tokens,
        prefix_saved_tokens: s.prefix_saved_tokens,
        kept_tokens: s.kept_tokens,
        decode_tokens: s.decode_tokens,
        embed_tokens: s.embed_tokens,
        prefill_s: s.prefill_time.as_secs_f64(),
        decode_s: s.decode_time.as_secs_f64(),
        embed_s: s.embed_time.as_secs_f64(),
        sampling_s: s.sample_time.as_secs_f64(),
        waiting_s: s.idle_time.as_secs_f64(),
    }
}

/// Without the engine there is nothing to report.
#[cfg(not(feature = "engine"))]
pub fn report(engine: &EngineHandle) -> crate::report::EngineReport {
    match **engine {}
}
