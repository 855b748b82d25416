//! `inflight serve`: OpenAI's Files and Batches APIs on local models (the `serve` module), each batch run by
//! the one-step run's own path (`run::run_with`) with the flags given here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::cache::CacheArgs;
use super::common::{setup_error, Exit, ServerArgs};
use super::engine::EngineArgs;
use super::jobs::{JobArgs, DEFAULT_MAX_LINE_BYTES};
use super::parse;
use super::run::{build_parser, run_with, Hooks};
use super::run_args::{RunArgs, SendArgs};
use super::session::next_signal;
use super::state::default_state_path;
use crate::output::Format;
use crate::serve::{BatchRun, BatchRunner, Keys, RunEnd, ServeConfig, Server};
use crate::store::Store;

/// Arguments of `inflight serve`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Point an OpenAI SDK at it: OpenAI(base_url=\"http://127.0.0.1:8090/v1\", api_key=KEY). \
Batches run one at a time, first created first; completion_window is accepted and batches never expire. \
The dashboard is at /, Prometheus metrics at /metrics.")]
pub struct ServeArgs {
    /// Address to listen on. Without --api-keys only a loopback address is accepted.
    #[arg(long, default_value = "127.0.0.1:8090", env = "INFLIGHT_LISTEN")]
    pub listen: SocketAddr,
    /// The data directory: uploaded files, batches and each batch's run state (made if missing; survives restarts).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// API keys, one per line: a request must send one as `Authorization: Bearer KEY`, and sees only the files
    /// and batches made with it. Required to listen on an address other than loopback.
    #[arg(long, value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// The largest file an upload may hold.
    #[arg(long, default_value = "512M", value_parser = parse::bytes)]
    pub max_upload: u64,
    /// Which servers run the batches (as `run`'s).
    #[command(flatten)]
    pub conn: ServerArgs,
    /// Or no server: the embedded engine on a GGUF file.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// `--cache`, `--cache-path`: answers kept across runs.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// How each batch's jobs are sent.
    #[command(flatten)]
    pub send: SendArgs,
}

/// Runs the command until Ctrl-C or SIGTERM.
pub async fn execute(args: ServeArgs) -> anyhow::Result<Exit> {
    let keys = match &args.api_keys {
        Some(path) => Keys::load(path).map_err(setup_error)?,
        None if args.listen.ip().is_loopback() => Keys::none(),
        None => {
            return Err(setup_error(format!(
                "refusing to listen on {} without --api-keys: anyone who can reach it could read and run batches \
                 (listen on 127.0.0.1, or give --api-keys FILE)",
                args.listen
            )))
        }
    };
    let template = batch_args(&args);
    let config = ServeConfig {
        data: args.data.clone(),
        keys,
        max_upload: args.max_upload,
        parser: build_parser(&template)?,
        max_line_bytes: template.job.max_line_bytes,
    };
    let shutdown = CancellationToken::new();
    let server = Server::open(config, shutdown.clone()).map_err(|e| setup_error(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| setup_error(format!("cannot listen on {}: {e}", args.listen)))?;
    let bound = listener.local_addr().map_err(|e| setup_error(format!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!("serving the OpenAI Files and Batches APIs at http://{bound}/v1 (dashboard http://{bound}/)");
    spawn_shutdown(shutdown);
    let runner = Runner { template };
    server.serve(listener, &runner).await.map_err(|e| setup_error(e.to_string()))?;
    Ok(Exit::Interrupted)
}

/// First Ctrl-C or SIGTERM: stop taking requests, let the running batch drain (it goes on at the next start).
/// Second: exit at once (the data directory is safe either way).
fn spawn_shutdown(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        next_signal(&mut term).await;
        eprintln!("stopping: the running batch drains and goes on at the next start (Ctrl-C again to quit now)");
        shutdown.cancel();
        next_signal(&mut term).await;
        std::process::exit(Exit::Interrupted as i32);
    });
}

/// The `run` flags every batch runs with; input, output and state are set per batch.
fn batch_args(args: &ServeArgs) -> RunArgs {
    RunArgs {
        input: None,
        output: None,
        conn: args.conn.clone(),
        engine: args.engine.clone(),
        cache: args.cache.clone(),
        model: None,
        job: JobArgs { template: None, system: None, max_line_bytes: DEFAULT_MAX_LINE_BYTES },
        workflow: None,
        max_tokens: None,
        temperature: None,
        seed: None,
        params: Vec::new(),
        completions: false,
        send: args.send.clone(),
        format: Format::Batch,
        state: None,
        lease: std::time::Duration::from_secs(30),
        restart: false,
        retry_failed: false,
        limit: None,
        dry_run: false,
        status_every: std::time::Duration::from_secs(60),
        quiet: true,
        metrics_listen: None,
        json: false,
    }
}

/// Runs a batch as `inflight run INPUT -o OUTPUT -q` with serve's flags would.
struct Runner {
    template: RunArgs,
}

#[async_trait::async_trait(?Send)]
impl BatchRunner for Runner {
    async fn run(&self, run: BatchRun) -> Result<RunEnd, String> {
        let mut args = self.template.clone();
        args.input = Some(run.input);
        args.output = Some(run.output.clone());
        let hooks = Hooks { stop: Some(run.stop), watch: Some(run.watch) };
        let exit = run_with(args, hooks).await.map_err(|e| format!("{e:#}"))?;
        let state = default_state_path(&run.output);
        let counts = Store::open(&state)
            .and_then(|s| s.counts())
            .map_err(|e| format!("cannot read the batch's state {}: {e}", state.display()))?;
        Ok(RunEnd { counts, interrupted: exit == Exit::Interrupted })
    }
}
