//! `--engine MODEL.gguf` and its settings (run and bench): the embedded llama.cpp engine instead of a server.
//! Everything here has a measured or sized default; the flags are for pinning a choice.

use std::path::PathBuf;
use std::sync::Arc;

use super::common::{setup_error, ServerArgs};
use crate::backend::{connect, ConnectOptions, Connection};

/// The engine's flags.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Embedded engine (no server)")]
pub struct EngineArgs {
    /// Run on this GGUF model in-process (llama.cpp), with no server: inflight picks the threads by
    /// measuring, decodes as many sequences together as the concurrency says, and sizes the KV cache from
    /// the jobs.
    #[arg(long, value_name = "MODEL.gguf", conflicts_with_all = ["server", "api"])]
    pub engine: Option<PathBuf>,
    /// Decode threads. Default: each count up to the physical cores is measured and the fastest kept.
    #[arg(long, value_name = "N", requires = "engine", value_parser = clap::value_parser!(u64).range(1..))]
    pub engine_threads: Option<u64>,
    /// Sequences the engine can decode together (the most jobs in flight). Default: --max-concurrency,
    /// at most 64.
    #[arg(long, value_name = "N", requires = "engine", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub engine_sequences: Option<u64>,
    /// The most tokens one job may use, prompt plus max_tokens. Default: the model's training context.
    /// Longer jobs fail with `context_length_exceeded`.
    #[arg(long, value_name = "TOKENS", requires = "engine", value_parser = clap::value_parser!(u32).range(16..))]
    pub engine_context: Option<u32>,
    /// Tokens per decode call (prompt chunks and generated tokens together).
    #[arg(long, value_name = "TOKENS", default_value_t = 512, requires = "engine", value_parser = clap::value_parser!(u32).range(32..=8192))]
    pub engine_batch: u32,
    /// Model layers on the GPU: `auto` (as many as fit; none without a GPU build) or a number.
    #[arg(long, value_name = "auto|N", default_value = "auto", requires = "engine", value_parser = gpu_layers)]
    pub gpu_layers: GpuLayers,
    /// How embeddings pool token vectors. Default: the model's own (models made for chat have none).
    #[arg(long, value_enum, requires = "engine")]
    pub pooling: Option<PoolingArg>,
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
            let c = connect(conn.single()?, conn.api, opts).await.map_err(|e| setup_error(e.to_string()))?;
            Ok((c, None))
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
    use crate::backend::{Backend, EngineBackend, EngineOptions};
    use inflight_engine::Pooling;
    let opts = EngineOptions {
        model: model.to_owned(),
        threads: args.engine_threads.map(|n| n as usize),
        sequences: args.engine_sequences.unwrap_or(max_concurrency.min(64)) as usize,
        context: args.engine_context,
        batch: args.engine_batch,
        gpu_layers: match args.gpu_layers {
            GpuLayers::Auto => None,
            GpuLayers::Count(n) => Some(n),
        },
        pooling: args.pooling.map(|p| match p {
            PoolingArg::Mean => Pooling::Mean,
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::Last => Pooling::Last,
        }),
    };
    let engine = Arc::new(EngineBackend::load(&opts).await.map_err(setup_error)?);
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

/// Sizes the engine for the jobs about to run (a sample of the pending ones) and refuses, before anything is
/// sent, jobs this model cannot do at all.
#[cfg(feature = "engine")]
pub fn plan(engine: &EngineHandle, store: &crate::store::Store) -> anyhow::Result<()> {
    let sample = store.pending_page(-1, 256)?;
    let bodies: Vec<(crate::job::Endpoint, &str)> = sample.iter().map(|j| (j.endpoint, j.body.as_str())).collect();
    engine.plan(&bodies).map_err(setup_error)
}

/// Without the engine there is nothing to size.
#[cfg(not(feature = "engine"))]
pub fn plan(engine: &EngineHandle, _store: &crate::store::Store) -> anyhow::Result<()> {
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
