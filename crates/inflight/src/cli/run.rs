//! `inflight run`: check the server, ingest the input into the state, reconcile the output files, dispatch,
//! summarize. Running the same command again resumes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::parse::Concurrency;
use super::state::{default_state_path, lock, remove_state};
use super::{parse, setup_error, CommandError, Exit, ServerArgs};
use crate::backend::{connect, Api, BusySampler, ConnectOptions, OllamaBackend};
use crate::dispatch::{dispatch, DispatchConfig, Ending, Verdict, Wiring};
use crate::job::{LineReader, Parser, RequestDefaults, Template};
use crate::live::{Health, LiveStats};
use crate::output::{errors_path, Format, OutputFiles};
use crate::report::{
    spawn_progress, ConcurrencyMode, ConcurrencyReport, Display, ExitReport, FilesReport, ProgressSource, RunSummary,
    Summary, SummaryInput, WorkflowReport,
};
use crate::store::{Counts, StepCount, Store, Writer};
use crate::tune::{spawn_controller_with, Clock, Controller, ControllerConfig, Limiter, SystemClock, TuneStatus};

/// Arguments of `inflight run`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Input lines: OpenAI Batch request lines ({\"custom_id\", \"method\", \"url\", \"body\"}), \
simple lines ({\"id\"?, \"prompt\"} | {\"id\"?, \"messages\"} | {\"id\"?, \"input\"}), or any JSON object with \
--template. Results go to OUT.jsonl, failures and bad lines to OUT.errors.jsonl, state to OUT.inflight.db. \
Exit codes: 0 all succeeded, 1 some failed or bad lines, 2 usage/setup error, 130 interrupted.")]
pub struct RunArgs {
    /// The jobs: a JSONL file, or `-` for standard input.
    pub input: PathBuf,
    /// Where results go (one JSON line per successful job); failures go to OUT.errors.jsonl beside it.
    #[arg(short, long, value_name = "OUT.jsonl", required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,
    /// Which server, and how to talk to it.
    #[command(flatten)]
    pub conn: ServerArgs,
    /// Model for lines that name none.
    #[arg(short, long)]
    pub model: Option<String>,
    /// Prompt template (Jinja syntax) rendered over each line's fields, e.g. `Extract claims: {{ segment }}`.
    #[arg(long, value_name = "FILE", conflicts_with = "workflow")]
    pub template: Option<PathBuf>,
    /// Run every line through the steps of a workflow file (each step with its model, template and
    /// parameters; see the README); the output lines hold every step's output.
    #[arg(long, value_name = "FLOW.yaml")]
    pub workflow: Option<PathBuf>,
    /// System message for prompt and template lines.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
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
    /// Output line shape.
    #[arg(long, value_enum, default_value = "batch")]
    pub format: Format,
    /// The state database. Default: OUT.inflight.db beside the output.
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Throw away the existing state and start over.
    #[arg(long)]
    pub restart: bool,
    /// Send failed jobs again (their error lines are removed).
    #[arg(long)]
    pub retry_failed: bool,
    /// Send at most N jobs in this session (e.g. 100, 10k).
    #[arg(long, value_parser = parse::count)]
    pub limit: Option<u64>,
    /// Parse and render every line and show what would be sent; send nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Longest accepted input line, in bytes.
    #[arg(long, default_value = "10485760", value_parser = parse::count)]
    pub max_line_bytes: u64,
    /// Status line period when stderr is not a terminal.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub status_every: Duration,
    /// No progress display.
    #[arg(short, long)]
    pub quiet: bool,
    /// At the end, print the summary as one JSON object on stdout (schema: docs/schema/run-summary.schema.json);
    /// the text summary goes to stderr instead.
    #[arg(long, conflicts_with = "dry_run")]
    pub json: bool,
}

pub(super) fn open_input(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())));
    }
    let file = std::fs::File::open(path).map_err(|e| setup_error(format!("cannot read {}: {e}", path.display())))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
}

fn build_parser(args: &RunArgs) -> anyhow::Result<Parser> {
    let template = match &args.template {
        Some(path) => {
            let src = std::fs::read_to_string(path)
                .map_err(|e| setup_error(format!("cannot read template {}: {e}", path.display())))?;
            let t = Template::new(src.clone())
                .map_err(|e| setup_error(format!("template {} does not compile: {e}", path.display())))?;
            Some((t, src))
        }
        None => None,
    };
    let defaults = RequestDefaults {
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        seed: args.seed,
        params: args.params.clone(),
        system: args.system.clone(),
        completions: args.completions,
    };
    Ok(Parser::new(defaults, template))
}

/// Runs the command.
pub async fn execute(args: RunArgs) -> anyhow::Result<Exit> {
    if let Some(flow) = args.workflow.clone() {
        return super::workflow::execute(args, &flow).await;
    }
    let parser = build_parser(&args)?;
    if args.dry_run {
        return dry_run(&args, &parser);
    }
    let out = args.output.clone().expect("clap requires --output without --dry-run");
    let state_path = args.state.clone().unwrap_or_else(|| default_state_path(&out));
    let _lock = lock(&state_path)?;

    let opts = ConnectOptions {
        api_key: args.conn.api_key.clone(),
        request_timeout: args.request_timeout,
        runner_options: OllamaBackend::runner_options_of(&args.params),
    };
    let conn = connect(args.conn.single()?, args.conn.api, &opts).await.map_err(|e| setup_error(e.to_string()))?;
    check_model(&args, &conn)?;
    tracing::info!(server = conn.backend.url(), "{}", conn.info.description);
    // Only once the server checks out: a --restart against a wrong URL should not cost the old state.
    if args.restart {
        remove_state(&state_path).with_context(|| format!("removing {}", state_path.display()))?;
    }

    let mut store = Store::open(&state_path).map_err(|e| setup_error(e.to_string()))?;
    let fresh = check_identity(&store, &parser, &args, &state_path)?;
    ingest(&mut store, &args, &parser, fresh).await?;
    let mut rebuild = store.meta("format")?.is_some_and(|f| f != args.format.name());
    store.set_meta("format", args.format.name())?;
    store.set_meta("output", &std::path::absolute(&out)?.to_string_lossy())?;
    if args.retry_failed {
        let n = store.reopen_failed()?;
        eprintln!("--retry-failed: {n} failed jobs will be sent again");
        rebuild |= n > 0;
    }

    let counts = store.counts()?;
    let files = OutputFiles::open(&out, &store, args.format, rebuild)?;
    let reader = store.reopen()?;
    let writer = Writer::spawn(store, Box::new(files))?;

    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone(), args.drain_timeout);
    let health = Health::new(conn.backend.clone(), stop.clone());
    let stats = Arc::new(LiveStats::default());
    let (limiter, samples, tune) = match args.concurrency {
        Concurrency::Fixed(n) => (Limiter::new(n), None, None),
        Concurrency::Auto => {
            let limiter = Limiter::new(1);
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let cfg = ControllerConfig { max: args.max_concurrency as usize, ..Default::default() };
            let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
            let controller = Controller::for_lanes(cfg, clock.now(), conn.info.kind.lanes());
            let (kind, api_key) = (conn.info.kind, args.conn.api_key.as_deref());
            let busy = BusySampler::new(kind, conn.backend.url(), api_key, BusySampler::RUN_EVERY);
            let handle = spawn_controller_with(controller, limiter.clone(), rx, busy, clock, kind.parallel_fix());
            (limiter, Some(tx), Some(handle))
        }
    };
    let progress = spawn_progress(ProgressSource {
        stats: stats.clone(),
        limiter: Some(limiter.clone()),
        detail: None,
        health: health.clone(),
        live: live_sink(writer.sender()),
        finished_before: counts.done + counts.failed,
        total: counts.total(),
        status_every: args.status_every,
        display: Display::detect(args.quiet),
        tune: tune.as_ref().map(|t| t.status.clone()),
    });
    let started = Instant::now();
    let config =
        DispatchConfig { max_attempts: args.max_attempts, drain_timeout: args.drain_timeout, limit: args.limit };
    let wiring = Wiring {
        backend: conn.backend.clone(),
        limiter: limiter.clone(),
        health,
        writer: writer.sender(),
        stats: stats.clone(),
        samples,
        stop,
    };
    let ending = dispatch(&reader, wiring, config).await;
    let wall = started.elapsed();
    progress.finish().await;
    let tuned = match tune {
        Some(t) => Some(t.finish().await),
        None => None,
    };
    writer.finish().context("recording results")?;
    let ending = ending?;

    let jobs =
        stats.done.load(std::sync::atomic::Ordering::Relaxed) + stats.failed.load(std::sync::atomic::Ordering::Relaxed);
    let summary = session_summary(&reader, &stats, |_| jobs, wall, Vec::new())?;
    let outcome = outcome(ending, &summary);
    let concurrency = concurrency_report(tuned, limiter.limit(), conn.info.kind.lanes());
    conclude(summary, Some(concurrency), None, files_report(&out, &state_path), outcome, args.json)
}

/// This session's summary: the store's counts and latencies, rates over the session's `wall` time for the jobs
/// `session_jobs` says it finished (given the store's counts now).
pub(super) fn session_summary(
    reader: &Store,
    stats: &LiveStats,
    session_jobs: impl FnOnce(&Counts) -> u64,
    wall: Duration,
    steps: Vec<StepCount>,
) -> anyhow::Result<Summary> {
    let counts = reader.counts()?;
    let tokens = stats.completion_tokens.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Summary::new(SummaryInput {
        counts,
        latency: reader.latency_histogram()?,
        session: Some((session_jobs(&counts), tokens, wall)),
        retries: stats.retries.load(std::sync::atomic::Ordering::Relaxed),
        steps,
    }))
}

/// Prints a session's summary (text on stdout or, with `--json`, one JSON object on stdout and the text on
/// stderr) and returns its exit code, or the error that stopped it.
pub(super) fn conclude(
    summary: Summary,
    concurrency: Option<ConcurrencyReport>,
    workflow: Option<WorkflowReport>,
    files: FilesReport,
    outcome: Result<Exit, CommandError>,
    json: bool,
) -> anyhow::Result<Exit> {
    let exit = match &outcome {
        Ok(exit) => ExitReport { code: *exit as i32, meaning: exit.meaning(), message: None },
        Err(e) => ExitReport { code: e.exit as i32, meaning: e.exit.meaning(), message: Some(e.message.clone()) },
    };
    let report = RunSummary { summary, concurrency, workflow, files, exit };
    if json {
        eprintln!("{}", report.render());
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.render());
    }
    if matches!(outcome, Ok(Exit::Interrupted)) {
        eprintln!("interrupted: run the same command again to resume ({} jobs pending)", report.summary.pending);
    }
    outcome.map_err(Into::into)
}

/// The exit code a dispatch ending means, or the error that stops the command.
fn outcome(ending: Ending, counts: &Summary) -> Result<Exit, CommandError> {
    match ending {
        Ending::Aborted(Verdict::SameFailure(message)) => Err(CommandError {
            exit: Exit::Setup,
            message: format!("stopped: {message}\nNothing was recorded for those jobs; fix the cause and run again."),
        }),
        Ending::Aborted(Verdict::WriterFailed) => {
            Err(CommandError { exit: Exit::Setup, message: "the state writer failed".into() })
        }
        Ending::Interrupted => Ok(Exit::Interrupted),
        Ending::Finished if counts.failed > 0 || counts.bad_lines > 0 => Ok(Exit::SomeFailed),
        Ending::Finished => Ok(Exit::Success),
    }
}

/// The concurrency of a one-step run: what auto's controller ended with (`tuned`), or the fixed level.
fn concurrency_report(tuned: Option<TuneStatus>, limit: usize, server_slots: Option<usize>) -> ConcurrencyReport {
    match tuned {
        None => ConcurrencyReport {
            mode: ConcurrencyMode::Fixed,
            held: limit,
            searching: false,
            max_tried: None,
            changes: None,
            effective_lanes: None,
            server_slots,
            server_busy_max: None,
            notes: Vec::new(),
        },
        Some(t) => ConcurrencyReport {
            mode: ConcurrencyMode::Auto,
            held: t.held.unwrap_or(limit),
            searching: t.held.is_none(),
            max_tried: Some(t.max_tried),
            changes: Some(t.changes),
            effective_lanes: t.lanes,
            server_slots,
            server_busy_max: t.busy_max,
            notes: t.notes,
        },
    }
}

/// Where a run's files are.
pub(super) fn files_report(out: &Path, state: &Path) -> FilesReport {
    FilesReport {
        results: out.display().to_string(),
        errors: errors_path(out).display().to_string(),
        state: state.display().to_string(),
    }
}

fn check_model(args: &RunArgs, conn: &crate::backend::Connection) -> anyhow::Result<()> {
    let (Some(model), Api::Ollama) = (&args.model, conn.backend.api()) else { return Ok(()) };
    let known = |m: &String| m == model || m.strip_suffix(":latest") == Some(model.as_str());
    if !conn.info.models.iter().any(known) {
        return Err(setup_error(format!(
            "model {model:?} is not on the Ollama server at {} (it has: {}); pull it with `ollama pull {model}`",
            conn.backend.url(),
            conn.info.models.join(", ")
        )));
    }
    Ok(())
}

/// Refuses a state that was started with other settings or another input. Returns whether the state is new.
fn check_identity(store: &Store, parser: &Parser, args: &RunArgs, state: &Path) -> anyhow::Result<bool> {
    let fingerprint = parser.fingerprint();
    match store.meta("settings")? {
        None => {
            store.set_meta("settings", &fingerprint)?;
            store.set_meta("input", &args.input.to_string_lossy())?;
            Ok(true)
        }
        Some(f) if f == fingerprint => Ok(false),
        Some(_) => Err(setup_error(format!(
            "{} belongs to a run with other settings (model, template, system or generation parameters).\n\
             Pass --restart to start over with these settings, or --state to start a separate run.",
            state.display()
        ))),
    }
}

/// Ingests the input (or the rest of it), or, for a complete ingest, checks the input did not change.
pub(super) async fn ingest(store: &mut Store, args: &RunArgs, parser: &Parser, fresh: bool) -> anyhow::Result<()> {
    let mut reader = LineReader::new(open_input(&args.input)?, args.max_line_bytes as usize);
    let done_lines: u64 = store.meta("ingest_lines")?.and_then(|v| v.parse().ok()).unwrap_or(0);
    let recorded_sha = store.meta("ingest_sha256")?;
    let changed = || {
        setup_error(format!(
            "the input {} changed since this run began; pass --restart to start over with it",
            args.input.display()
        ))
    };
    if !fresh {
        reader.skip_lines(done_lines)?;
        if recorded_sha.is_some_and(|s| s != reader.digest_so_far()) {
            return Err(changed());
        }
    }
    if store.meta("ingest_done")?.is_some() {
        // Complete: the rest of the input must be empty.
        if reader.next_line()?.is_some() {
            return Err(changed());
        }
        return Ok(());
    }
    let started = Instant::now();
    let report = tokio::task::block_in_place(|| {
        store.ingest(&mut reader, parser, |lines| {
            if started.elapsed() > Duration::from_secs(2) && !args.quiet {
                eprintln!("ingesting: {lines} lines");
            }
        })
    })?;
    tracing::info!(jobs = report.jobs, bad_lines = report.bad_lines, "ingested in {:?}", started.elapsed());
    Ok(())
}

fn dry_run(args: &RunArgs, parser: &Parser) -> anyhow::Result<Exit> {
    let mut reader = LineReader::new(open_input(&args.input)?, args.max_line_bytes as usize);
    let (mut jobs, mut bad, mut shown) = (0u64, 0u64, 0);
    while let Some(line) = reader.next_line()? {
        let parsed = match line {
            crate::job::RawLine::Line(n, bytes) => parser.parse(n, &bytes),
            crate::job::RawLine::TooLong(n, len) => {
                Err(crate::job::BadLine { line: n, code: "line_too_long", message: format!("{len} bytes") })
            }
        };
        match parsed {
            Ok(Some(job)) => {
                jobs += 1;
                if shown < 3 {
                    println!("{} {} {}", job.id, job.endpoint.path(), job.body);
                    shown += 1;
                }
            }
            Ok(None) => {}
            Err(b) => {
                bad += 1;
                println!("line {}: {} ({})", b.line, b.code, b.message);
            }
        }
    }
    println!("dry run: {jobs} jobs, {bad} bad lines; nothing sent");
    Ok(if bad > 0 { Exit::SomeFailed } else { Exit::Success })
}

async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(t) => {
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// First Ctrl-C or SIGTERM: stop sending and drain. Second: exit at once (the state is safe either way).
pub(super) fn spawn_signal_handler(stop: CancellationToken, drain: Duration) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        next_signal(&mut term).await;
        eprintln!(
            "\nstopping: waiting up to {}s for requests in flight (Ctrl-C again to quit now; the run resumes either way)",
            drain.as_secs()
        );
        stop.cancel();
        next_signal(&mut term).await;
        std::process::exit(Exit::Interrupted as i32);
    });
}

/// Keeps the progress display's `live` blob in the state, where `inflight status` reads it.
pub(super) fn live_sink(writer: std::sync::mpsc::Sender<crate::store::WriteMsg>) -> Box<dyn Fn(String) + Send + Sync> {
    Box::new(move |blob| {
        let _ = writer.send(crate::store::WriteMsg::Live(blob));
    })
}
