//! The `inflight-sim` binary: starts a simulated server (or `--servers N` of them), prints each one's URL on a
//! line of stdout and serves until killed.

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use inflight_sim::{Api, Faults, Profile, SimConfig, SimServer};

/// A simulated LLM inference server (OpenAI or Ollama API).
#[derive(Debug, Parser)]
#[command(name = "inflight-sim", version)]
struct Args {
    /// API to speak.
    #[arg(long, value_enum, default_value = "openai")]
    api: Api,
    /// Performance profile.
    #[arg(long, value_enum, default_value = "lanes4", conflicts_with = "zero_latency")]
    profile: Profile,
    /// Answer at once with a fixed short completion (overhead benchmarks).
    #[arg(long)]
    zero_latency: bool,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How many servers this process runs, each with its own state and port (on free ports; with `--port`, on
    /// consecutive ones from it), one URL a line. Several in one process cost the same to run as one: an
    /// overhead benchmark comparing one server with four then measures the client alone.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    servers: u16,
    /// Simulated time runs this many times faster than wall time.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override the profile's lane count.
    #[arg(long)]
    lanes: Option<usize>,
    /// Override the profile's queue bound (503 beyond it).
    #[arg(long)]
    max_queue: Option<usize>,
    /// Model names that answer "not found".
    #[arg(long = "missing-model")]
    missing_models: Vec<String>,
    /// Require `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// Probability of an HTTP 500 per request.
    #[arg(long, default_value_t = 0.0)]
    fault_500: f64,
    /// Probability of an HTTP 503 with Retry-After per request.
    #[arg(long, default_value_t = 0.0)]
    fault_503: f64,
    /// Probability of a connection reset per request.
    #[arg(long, default_value_t = 0.0)]
    fault_reset: f64,
    /// Probability of a stall per request.
    #[arg(long, default_value_t = 0.0)]
    fault_stall: f64,
    /// Probability of a truncated response per request.
    #[arg(long, default_value_t = 0.0)]
    fault_truncated: f64,
    /// Most faults one request (same body) gets; 0 means no limit.
    #[arg(long, default_value_t = 0)]
    fault_max_per_request: u32,
    /// Wall-clock seconds a stalled request is held.
    #[arg(long, default_value_t = 60.0)]
    stall_secs: f64,
    /// A model the server lists (repeatable; default `sim-model`).
    #[arg(long = "model")]
    models: Vec<String>,
    /// Models kept loaded at once (Ollama mode).
    #[arg(long, default_value_t = 3)]
    max_loaded_models: usize,
    /// Simulated seconds to load a model (Ollama mode).
    #[arg(long, default_value_t = 0.5)]
    load_secs: f64,
    /// The most inputs one embedding request may carry (413 above, as TEI's --max-client-batch-size).
    #[arg(long)]
    embed_max_inputs: Option<usize>,
    /// The most tokens (4 bytes each) one embedding input may have (400 above, as llama-server's context).
    #[arg(long)]
    embed_context: Option<u32>,
}

fn config(a: &Args) -> SimConfig {
    let mut cfg = if a.zero_latency { SimConfig::zero_latency() } else { SimConfig::profile(a.profile) };
    if let Some(lanes) = a.lanes {
        cfg = cfg.with_lanes(lanes);
    }
    if a.max_queue.is_some() {
        cfg = cfg.with_max_queue(a.max_queue);
    }
    if !a.models.is_empty() {
        cfg = cfg.with_models(a.models.clone());
    }
    cfg.with_api(a.api)
        .with_port(a.port)
        .with_time_scale(a.time_scale)
        .with_seed(a.seed)
        .with_missing_models(a.missing_models.clone())
        .with_api_key(a.api_key.clone())
        .with_stall_for(Duration::from_secs_f64(a.stall_secs.max(0.0)))
        .with_max_loaded_models(a.max_loaded_models)
        .with_load_time(Duration::from_secs_f64(a.load_secs.max(0.0)))
        .with_embed_max_inputs(a.embed_max_inputs)
        .with_embed_context(a.embed_context)
        .with_faults(Faults {
            error_500: a.fault_500,
            error_503_retry_after: a.fault_503,
            reset: a.fault_reset,
            stall: a.fault_stall,
            truncated: a.fault_truncated,
            max_per_request: a.fault_max_per_request,
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.time_scale.is_finite() && args.time_scale > 0.0, "--time-scale must be positive");
    let mut servers = Vec::new();
    for i in 0..args.servers {
        let port =
            if args.port == 0 { 0 } else { args.port.checked_add(i).ok_or(anyhow::anyhow!("--port too high"))? };
        servers.push(SimServer::start(config(&args).with_port(port)).await?);
    }
    let mut out = std::io::stdout().lock();
    for server in &servers {
        writeln!(out, "{}", server.url())?;
    }
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    Ok(())
}
