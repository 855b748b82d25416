//! The flags of `inflight run`, shared by its two modes (one step per line, and `--workflow`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::cache::CacheArgs;
use super::common::ServerArgs;
use super::engine::EngineArgs;
use super::jobs::JobArgs;
use super::parse;
use crate::backend::{ConnectOptions, InputsPerRequest, OllamaBackend};
use crate::output::Format;

/// Arguments of `inflight run`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Input lines: OpenAI Batch request lines ({\"custom_id\", \"method\", \"url\", \"body\"}), \
simple lines ({\"id\"?, \"prompt\"} | {\"id\"?, \"messages\"} | {\"id\"?, \"input\"}), or any JSON object with \
--template. Results go to OUT.jsonl, failures and bad lines to OUT.errors.jsonl, state to OUT.inflight.db. \
Exit codes: 0 all succeeded, 1 some failed or bad lines, 2 usage/setup error, 130 interrupted.")]
pub struct RunArgs {
    /// The jobs: a JSONL file, or `-` for standard input. A worker joining a run shared through PostgreSQL
    /// may leave it out.
    pub input: Option<PathBuf>,
    /// Where results go (one JSON line per successful job); failures go to OUT.errors.jsonl beside it. With a
    /// PostgreSQL state, optional: this worker's copy of the whole run's output.
    #[arg(short, long, value_name = "OUT.jsonl")]
    pub output: Option<PathBuf>,
    /// Which server, and how to talk to it.
    #[command(flatten)]
    pub conn: ServerArgs,
    /// Or no server: the embedded engine on a GGUF file.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// `--cache`, `--cache-path`: answers kept across runs.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Model for lines that name none.
    #[arg(short, long)]
    pub model: Option<String>,
    /// `--template`, `--system`, `--max-line-bytes`: read as bench and doctor read their `--jobs`.
    #[command(flatten)]
    pub job: JobArgs,
    /// Run every line through the steps of a workflow file (each step with its model, template and
    /// parameters; see the README); the output lines hold every step's output.
    #[arg(long, value_name = "FLOW.yaml", conflicts_with = "template")]
    pub workflow: Option<PathBuf>,
    /// Default `max_tokens` for lines that set none.
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Default `temperature`.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Default `seed`.
    #[arg(long)]
    pub seed: Option<i64>,
    /// Any other request parameter, `key=value` (value parsed as JSON when it can be); repeatable.
    /// For Ollama, `num_ctx`/`num_batch`/`num_gpu`/`num_thread` set here are sent with every request.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse::param)]
    pub params: Vec<(String, serde_json::Value)>,
    /// Send `prompt` lines as raw completions (`/v1/completions`, no chat template) instead of chat.
    #[arg(long)]
    pub completions: bool,
    /// `--concurrency`, `--max-concurrency`, `--max-attempts`, `--request-timeout`, `--drain-timeout`,
    /// `--prefix-order`, `--inputs-per-request`: how the jobs are sent (`serve` takes the same).
    #[command(flatten)]
    pub send: SendArgs,
    /// Output line shape.
    #[arg(long, value_enum, default_value = "batch")]
    pub format: Format,
    /// The state database. Default: OUT.inflight.db beside the output. `postgres://USER@HOST/DB?run=NAME`
    /// shares the run NAME through PostgreSQL: every process started with the same URL (on any machine, each
    /// with its own servers) takes jobs from it, and none is answered twice.
    #[arg(long, value_name = "PATH|URL", env = "INFLIGHT_STATE")]
    pub state: Option<PathBuf>,
    /// With a PostgreSQL state: how long a claimed job stays this worker's without a renewal (renewed every
    /// third of it while the worker lives). A worker that dies or stalls loses its jobs to the others after it.
    #[arg(long, default_value = "30s", value_parser = parse::duration)]
    pub lease: Duration,
    /// Throw away the existing state and start over.
    #[arg(long)]
    pub restart: bool,
    /// Send failed jobs again (their error lines are removed).
    #[arg(long)]
    pub retry_failed: bool,
    /// Send at most N jobs in this session (e.g. 100, 10k): the first N in file order.
    #[arg(long, value_parser = parse::count)]
    pub limit: Option<u64>,
    /// Parse and render every line and show what would be sent; send nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Status line period when stderr is not a terminal.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub status_every: Duration,
    /// No progress display.
    #[arg(short, long)]
    pub quiet: bool,
    /// Serve the run's counters in Prometheus text format at http://ADDR/metrics while it goes (jobs, output
    /// tokens, requests in flight and the concurrency limit per server, a latency histogram).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["workflow", "dry_run"])]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// At the end, print the summary as one JSON object on stdout (schema: docs/schema/run-summary.schema.json);
    /// the text summary goes to stderr instead.
    #[arg(long, conflicts_with = "dry_run")]
    pub json: bool,
}

/// How jobs are sent: the flags `run` and `serve` share (operational: none is part of a run's identity).
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Requests in flight: `auto` finds and holds the fastest sustainable level while the run goes (and says
    /// what limits it); a number fixes it.
    #[arg(short, long, default_value = "auto", value_parser = parse::concurrency)]
    pub concurrency: parse::Concurrency,
    /// Upper bound for `--concurrency auto`.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_concurrency: u64,
    /// Attempts per job for transient failures (connection errors, timeouts, 429/5xx).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// How long one request may take.
    #[arg(long, default_value = "10m", value_parser = parse::duration)]
    pub request_timeout: Duration,
    /// After Ctrl-C, how long requests in flight may finish.
    #[arg(long, default_value = "30s", value_parser = parse::duration)]
    pub drain_timeout: Duration,
    /// The order jobs are sent in: `auto` (the default) sends jobs whose prompts share most of their text
    /// one after another (within windows of 1,024 pending jobs), one question of each document in flight at a
    /// time while there are other documents to send (no more documents at once than the server has slots; on
    /// one llama-server each pinned to its slot with `id_slot`), so a server's prefix cache still holds the
    /// document when the next question comes; `off` sends in file order. Output files are in commit order
    /// either way.
    #[arg(long, value_enum, default_value = "auto", env = "INFLIGHT_PREFIX_ORDER")]
    pub prefix_order: PrefixOrder,
    /// Embedding inputs one request may carry: `auto` packs the `input` lines that are in flight together into
    /// requests of several inputs (about half of them each, up to 256), so the concurrency, which then counts
    /// inputs, sets the size too; a number fixes the most; `1` sends each line alone. Each line keeps its own
    /// result; a refused request is split so one bad input fails only its line.
    #[arg(long, default_value = "auto", value_parser = parse::inputs_per_request, env = "INFLIGHT_INPUTS_PER_REQUEST")]
    pub inputs_per_request: InputsPerRequest,
}

impl RunArgs {
    /// The PostgreSQL state `--state` names, if it names one.
    pub fn shared_state(&self) -> anyhow::Result<Option<crate::store::PgUrl>> {
        let state = self.state.as_deref().map(crate::store::PgUrl::from_state).transpose();
        state.map(Option::flatten).map_err(|e| super::common::setup_error(e.to_string()))
    }

    /// The input file (required but with a PostgreSQL state).
    pub fn input(&self) -> anyhow::Result<&std::path::Path> {
        self.input.as_deref().ok_or_else(|| super::common::setup_error("the input file (JOBS.jsonl) is required"))
    }

    /// How to talk to the servers: the key, the request timeout, and Ollama's runner options (which every
    /// request must share).
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            api_key: self.conn.api_key.clone(),
            request_timeout: self.send.request_timeout,
            runner_options: OllamaBackend::runner_options_of(&self.params),
            inputs_per_request: self.send.inputs_per_request,
        }
    }
}

/// `--prefix-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrefixOrder {
    /// Jobs sharing a prompt prefix are sent together.
    Auto,
    /// File order.
    Off,
}
