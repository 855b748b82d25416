//! `inflight run`, one step per line: check the servers, open the run's session (state, ingest, outputs),
//! dispatch under each server's limiter (fixed, or moved by its controller), summarize. Running the same command
//! again resumes. `serve` runs each batch through [`run_with`], the same path, with its own stop token and a view
//! of the live counters.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::common::{setup_error, CommandError, Exit};
use super::engine;
use super::run_args::{PrefixOrder, RunArgs};
use super::servers_file::{self, Listed};
use super::session::{Identity, Locked, Ran};
use super::targets::{check_models, Fleet, RunTarget};
use crate::backend::{connect, ConnectOptions, Connection};
use crate::dispatch::{dispatch, DispatchConfig, Ending, Verdict, Wiring};
use crate::job::{Entry, Parser, RequestDefaults};
use crate::report::{spawn_progress, Display, ProgressSource, RunView, Summary};

/// The parser a one-step run reads its input with (`serve` checks input files with the same one).
pub(super) fn build_parser(args: &RunArgs) -> anyhow::Result<Parser> {
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

/// What a caller adds to a one-step run besides its flags (`serve`'s batches).
#[derive(Default)]
pub(super) struct Hooks {
    /// Stops the run (it drains as after Ctrl-C); without it, Ctrl-C and SIGTERM do.
    pub stop: Option<CancellationToken>,
    /// Handed the run's live view once, when it starts sending.
    pub watch: Option<Box<dyn FnOnce(RunView) + Send>>,
}

/// Runs the command (one step per line; `--workflow` runs go to `cli::workflow`).
pub async fn execute(args: RunArgs) -> anyhow::Result<Exit> {
    run_with(args, Hooks::default()).await
}

/// Runs (or resumes) a one-step run: the command's path, and each of `serve`'s batches.
pub(super) async fn run_with(args: RunArgs, hooks: Hooks) -> anyhow::Result<Exit> {
    let parser = build_parser(&args)?;
    if args.dry_run {
        return dry_run(&args, &parser);
    }
    let metrics = bind_metrics(&args).await?;
    let locked = Locked::new(&args)?.stopped_by(hooks.stop);
    let opts = args.connect_options();
    let (conns, engine, listed) = connect_all(&args, &opts).await?;
    for conn in &conns {
        tracing::info!(server = conn.backend.url(), "{}", conn.info.description);
    }
    let fingerprint = parser.fingerprint();
    let session = locked.open(&args, Identity::Settings(&fingerprint), &parser, args.format).await?;
    if let Some(engine) = &engine {
        engine::plan(engine, &session.work.sample(engine::PLAN_SAMPLE).await?)?;
    }
    // One server's model identity keys the cache; answers from several servers are not told apart by it.
    let identity = if conns.len() == 1 && listed.is_none() { conns[0].info.identity.clone() } else { None };
    let cache = args.cache.open(identity);
    let targets: Vec<RunTarget> = conns.into_iter().map(|c| RunTarget::new(&args, c, &session.stop)).collect();
    check_models(&targets, &session.work.pending_models()?)?;
    let fleet = Fleet::new(targets);
    let (changes, watching) = match listed {
        Some(listed) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let stop = session.stop.child_token();
            let watch = listed.watch(args.clone(), fleet.clone(), tx, stop.clone(), session.stop.clone());
            (Some(rx), Some((watch, stop)))
        }
        None => (None, None),
    };
    let several = fleet.len() > 1 || changes.is_some();
    let (limiter, health, tune) = fleet.first();
    let progress = spawn_progress(ProgressSource {
        stats: session.stats.clone(),
        limiter: (!several).then_some(limiter),
        detail: several.then(|| progress_detail(fleet.clone())),
        servers: several.then(|| servers_live(fleet.clone())),
        health,
        live: session.live_sink(),
        finished_before: session.before.done + session.before.failed,
        total: session.before.total(),
        status_every: args.status_every,
        display: Display::detect(args.quiet),
        tune,
    });
    let view = RunView { stats: session.stats.clone(), servers: fleet.gauges(), before: session.before };
    if let Some(listener) = metrics {
        crate::serve::spawn_run_metrics(listener, view.clone());
    }
    if let Some(watch) = hooks.watch {
        watch(view);
    }
    let started = Instant::now();
    let config = DispatchConfig {
        max_attempts: args.send.max_attempts,
        drain_timeout: args.send.drain_timeout,
        limit: args.limit,
        prefix_order: args.send.prefix_order == PrefixOrder::Auto,
    };
    let wiring = Wiring {
        targets: fleet.targets(),
        writer: session.writer.sender(),
        stats: session.stats.clone(),
        stop: session.stop.clone(),
        cache: cache.clone(),
        changes,
    };
    let ending = dispatch(session.work.source(), wiring, config).await;
    let wall = started.elapsed();
    if let Some((watch, stop)) = watching {
        stop.cancel();
        let _ = watch.await;
    }
    progress.finish().await;
    let several = several || fleet.len() > 1;
    let packing = fleet.packing();
    let reports = fleet.finish().await;
    let finished = session.finish_writer().await?;
    let ending = ending?;
    let (concurrency, servers): (Vec<_>, Vec<_>) = reports.into_iter().unzip();
    let engine = engine.as_ref().map(engine::report);
    let cache = cache.map(|c| c.finish());
    let concurrency = concurrency.into_iter().next();
    let servers = if several { servers } else { Vec::new() };
    let ran = Ran { wall, steps: Vec::new(), concurrency, workflow: None, engine, cache, servers, packing };
    finished.conclude(ran, |summary| outcome(ending, summary)).await
}

/// The `--metrics-listen` socket, bound before anything else so a taken address costs nothing.
async fn bind_metrics(args: &RunArgs) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = args.metrics_listen else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| setup_error(format!("cannot listen on {addr} (--metrics-listen): {e}")))?;
    if let Ok(bound) = listener.local_addr() {
        eprintln!("metrics: http://{bound}/metrics");
    }
    Ok(Some(listener))
}

/// The run's servers: each `--server` (several allowed), those of `--servers-file` that answer (the others are
/// tried again while the run goes), the engine (beside servers too), or else the one server found on the usual
/// ports. With a servers file, what the watcher needs to follow it.
async fn connect_all(
    args: &RunArgs,
    opts: &ConnectOptions,
) -> anyhow::Result<(Vec<Connection>, Option<engine::EngineHandle>, Option<Listed>)> {
    let file = args.conn.servers_file.as_deref().map(servers_file::read).transpose()?;
    let given = &args.conn.server;
    if file.is_none() && given.len() + usize::from(args.engine.engine.is_some()) <= 1 {
        let (conn, engine) = engine::open(&args.conn, &args.engine, opts, args.send.max_concurrency).await?;
        return Ok((vec![conn], engine, None));
    }
    let mut conns: Vec<Connection> = Vec::new();
    let mut engine_handle = None;
    if args.engine.engine.is_some() {
        let alone = super::common::ServerArgs { server: Vec::new(), servers_file: None, ..args.conn.clone() };
        let (conn, engine) = engine::open(&alone, &args.engine, opts, args.send.max_concurrency).await?;
        conns.push(conn);
        engine_handle = engine;
    }
    for url in given {
        let conn = connect(Some(url), args.conn.api, opts).await.map_err(|e| setup_error(e.to_string()))?;
        if conns.iter().any(|c| c.backend.url() == conn.backend.url()) {
            return Err(setup_error(format!("--server {url} is given twice")));
        }
        conns.push(conn);
    }
    let listed = match (file, &args.conn.servers_file) {
        (Some((text, _)), Some(path)) => {
            let (listed, more) = Listed::connect(path, text, given, args, opts).await;
            for conn in more {
                if !conns.iter().any(|k| k.backend.url() == conn.backend.url()) {
                    conns.push(conn);
                }
            }
            if conns.is_empty() {
                return Err(setup_error(format!(
                    "no server in the servers file {} answers, and no --server or --engine is given",
                    path.display()
                )));
            }
            Some(listed)
        }
        _ => None,
    };
    Ok((conns, engine_handle, listed))
}

/// With several servers, the progress line lists each one's requests in flight, limit and answers.
fn progress_detail(fleet: Fleet) -> Arc<dyn Fn() -> String + Send + Sync> {
    Arc::new(move || fleet.progress_line())
}

/// With several servers, each one's state for `status --json`.
fn servers_live(fleet: Fleet) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
    let started = Instant::now();
    Arc::new(move || fleet.live(started.elapsed()))
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
    let mut reader = args.job.open(args.input()?, parser)?;
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
