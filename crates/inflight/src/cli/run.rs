//! `inflight run`, one step per line: check the server, open the run's session (state, ingest, outputs), dispatch
//! under the limiter (fixed, or moved by the controller), summarize. Running the same command again resumes.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::common::{setup_error, CommandError, Exit};
use super::engine;
use super::parse::Concurrency;
use super::run_args::RunArgs;
use super::session::{Identity, Locked, Ran};
use crate::backend::{Api, BusySampler, Connection};
use crate::dispatch::{dispatch, DispatchConfig, Ending, Verdict, Wiring};
use crate::job::{Entry, Parser, RequestDefaults};
use crate::live::Health;
use crate::report::{spawn_progress, ConcurrencyMode, ConcurrencyReport, Display, ProgressSource, Summary};
use crate::tune::{
    spawn_controller_with, Clock, Controller, ControllerConfig, Limiter, Sample, SystemClock, TuneHandle, TuneStatus,
};

fn build_parser(args: &RunArgs) -> anyhow::Result<Parser> {
    args.job.parser(RequestDefaults {
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        seed: args.seed,
        params: args.params.clone(),
        system: None,
        completions: args.completions,
    })
}

/// Runs the command (one step per line; `--workflow` runs go to `cli::workflow`).
pub async fn execute(args: RunArgs) -> anyhow::Result<Exit> {
    let parser = build_parser(&args)?;
    if args.dry_run {
        return dry_run(&args, &parser);
    }
    let locked = Locked::new(&args)?;
    let opts = args.connect_options();
    let (conn, engine) = engine::open(&args.conn, &args.engine, &opts, args.max_concurrency).await?;
    check_model(&args, &conn)?;
    tracing::info!(server = conn.backend.url(), "{}", conn.info.description);
    let fingerprint = parser.fingerprint();
    let session = locked.open(&args, Identity::Settings(&fingerprint), &parser, args.format).await?;
    if let Some(engine) = &engine {
        engine::plan(engine, &session.reader)?;
    }

    let health = Health::new(conn.backend.clone(), session.stop.clone());
    let cache = args.cache.open(conn.info.identity.clone());
    let (limiter, samples, tune) = concurrency(&args, &conn);
    let progress = spawn_progress(ProgressSource {
        stats: session.stats.clone(),
        limiter: Some(limiter.clone()),
        detail: None,
        health: health.clone(),
        live: session.live_sink(),
        finished_before: session.before.done + session.before.failed,
        total: session.before.total(),
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
        writer: session.writer.sender(),
        stats: session.stats.clone(),
        samples,
        stop: session.stop.clone(),
        cache: cache.clone(),
    };
    let ending = dispatch(&session.reader, wiring, config).await;
    let wall = started.elapsed();
    progress.finish().await;
    let tuned = match tune {
        Some(t) => Some(t.finish().await),
        None => None,
    };
    let finished = session.finish_writer()?;
    let ending = ending?;
    let concurrency = concurrency_report(tuned, limiter.limit(), conn.info.kind.lanes());
    let engine = engine.as_ref().map(engine::report);
    let cache = cache.map(|c| c.finish());
    let ran = Ran { wall, steps: Vec::new(), concurrency: Some(concurrency), workflow: None, engine, cache };
    finished.conclude(ran, |summary| outcome(ending, summary))
}

/// The limiter and, for `--concurrency auto`, the controller that moves it and the channel that feeds it.
fn concurrency(args: &RunArgs, conn: &Connection) -> (Limiter, Option<UnboundedSender<Sample>>, Option<TuneHandle>) {
    match args.concurrency {
        Concurrency::Fixed(n) => (Limiter::new(n), None, None),
        Concurrency::Auto => {
            let limiter = Limiter::new(1);
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let max = conn.info.kind.ceiling(args.max_concurrency as usize);
            let cfg = ControllerConfig { max, ..Default::default() };
            let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
            let controller = Controller::for_lanes(cfg, clock.now(), conn.info.kind.start_level());
            let (kind, api_key) = (conn.info.kind, args.conn.api_key.as_ref());
            let busy = BusySampler::new(kind, conn.backend.url(), api_key, BusySampler::RUN_EVERY);
            let handle = spawn_controller_with(controller, limiter.clone(), rx, busy, clock, kind.parallel_fix());
            (limiter, Some(tx), Some(handle))
        }
    }
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

fn dry_run(args: &RunArgs, parser: &Parser) -> anyhow::Result<Exit> {
    let mut reader = args.job.open(&args.input, parser)?;
    let (mut jobs, mut bad, mut shown) = (0u64, 0u64, 0);
    while let Some(entry) = reader.next_entry()? {
        match entry {
            Entry::Job(job) => {
                jobs += 1;
                if shown < 3 {
                    println!("{} {} {}", job.id, job.endpoint.path(), job.body);
                    shown += 1;
                }
            }
            Entry::Bad(b) => {
                bad += 1;
                println!("{b}");
            }
        }
    }
    println!("dry run: {jobs} jobs, {bad} bad lines; nothing sent");
    Ok(if bad > 0 { Exit::SomeFailed } else { Exit::Success })
}
