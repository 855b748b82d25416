//! `inflight run`, one step per line: check the servers, open the run's session (state, ingest, outputs),
//! dispatch under each server's limiter (fixed, or moved by its controller), summarize. Running the same command
//! again resumes.

use std::sync::Arc;
use std::time::Instant;

use super::common::{setup_error, CommandError, Exit};
use super::engine;
use super::run_args::{PrefixOrder, RunArgs};
use super::session::{Identity, Locked, Ran};
use super::targets::{check_models, RunTarget, TargetView};
use crate::backend::{connect, ConnectOptions, Connection};
use crate::dispatch::{dispatch, DispatchConfig, Ending, Verdict, Wiring};
use crate::job::{Entry, Parser, RequestDefaults};
use crate::report::{spawn_progress, Display, ProgressSource, Summary};

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
    let (conns, engine) = connect_all(&args, &opts).await?;
    for conn in &conns {
        tracing::info!(server = conn.backend.url(), "{}", conn.info.description);
    }
    let fingerprint = parser.fingerprint();
    let session = locked.open(&args, Identity::Settings(&fingerprint), &parser, args.format).await?;
    if let Some(engine) = &engine {
        engine::plan(engine, &session.reader)?;
    }
    // One server's model identity keys the cache; answers from several servers are not told apart by it.
    let identity = if conns.len() == 1 { conns[0].info.identity.clone() } else { None };
    let cache = args.cache.open(identity);
    let targets: Vec<RunTarget> = conns.into_iter().map(|c| RunTarget::new(&args, c, &session.stop)).collect();
    check_models(&targets, &session.reader.pending_models()?)?;
    let progress = spawn_progress(ProgressSource {
        stats: session.stats.clone(),
        limiter: (targets.len() == 1).then(|| targets[0].limiter.clone()),
        detail: progress_detail(&targets),
        health: targets[0].health().clone(),
        live: session.live_sink(),
        finished_before: session.before.done + session.before.failed,
        total: session.before.total(),
        status_every: args.status_every,
        display: Display::detect(args.quiet),
        tune: targets[0].tune_status(),
    });
    let started = Instant::now();
    let config = DispatchConfig {
        max_attempts: args.max_attempts,
        drain_timeout: args.drain_timeout,
        limit: args.limit,
        prefix_order: args.prefix_order == PrefixOrder::Auto,
    };
    let wiring = Wiring {
        targets: targets.iter().map(RunTarget::target).collect(),
        writer: session.writer.sender(),
        stats: session.stats.clone(),
        stop: session.stop.clone(),
        cache: cache.clone(),
    };
    let ending = dispatch(&session.reader, wiring, config).await;
    let wall = started.elapsed();
    progress.finish().await;
    let several = targets.len() > 1;
    let mut reports = Vec::new();
    for t in targets {
        reports.push(t.finish().await);
    }
    let finished = session.finish_writer()?;
    let ending = ending?;
    let (concurrency, servers): (Vec<_>, Vec<_>) = reports.into_iter().unzip();
    let engine = engine.as_ref().map(engine::report);
    let cache = cache.map(|c| c.finish());
    let concurrency = concurrency.into_iter().next();
    let servers = if several { servers } else { Vec::new() };
    let ran = Ran { wall, steps: Vec::new(), concurrency, workflow: None, engine, cache, servers };
    finished.conclude(ran, |summary| outcome(ending, summary))
}

/// The run's servers: each `--server` (several allowed), or the one found on the usual ports, or the engine.
async fn connect_all(
    args: &RunArgs,
    opts: &ConnectOptions,
) -> anyhow::Result<(Vec<Connection>, Option<engine::EngineHandle>)> {
    if args.conn.server.len() <= 1 {
        let (conn, engine) = engine::open(&args.conn, &args.engine, opts, args.max_concurrency).await?;
        return Ok((vec![conn], engine));
    }
    let mut conns: Vec<Connection> = Vec::new();
    for url in &args.conn.server {
        let conn = connect(Some(url), args.conn.api, opts).await.map_err(|e| setup_error(e.to_string()))?;
        if conns.iter().any(|c| c.backend.url() == conn.backend.url()) {
            return Err(setup_error(format!("--server {url} is given twice")));
        }
        conns.push(conn);
    }
    Ok((conns, None))
}

/// With several servers, the progress line lists each one's requests in flight, limit and answers.
fn progress_detail(targets: &[RunTarget]) -> Option<Arc<dyn Fn() -> String + Send + Sync>> {
    if targets.len() < 2 {
        return None;
    }
    let views: Vec<TargetView> = targets.iter().map(RunTarget::view).collect();
    Some(Arc::new(move || views.iter().map(|v| v.line()).collect::<Vec<_>>().join(" || ")))
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
