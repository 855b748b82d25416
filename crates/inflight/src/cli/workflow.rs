//! `inflight run --workflow FLOW.yaml`: the workflow mode of `run`. The same session (state file, ingest, output
//! reconciliation, signals, summary: `cli::session`) as the one-step mode; the dispatcher is replaced by the scheduling loops of
//! [`crate::workflow`], and the run's identity is checked per step instead of as a whole.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::common::{setup_error, CommandError, Exit};
use super::parse::Concurrency;
use super::run_args::RunArgs;
use super::session::{Identity, Locked, Ran, Session};
use super::targets::models_of;
use crate::backend::{
    connect, names_model, normalize, Api, ConnectOptions, Connection, InputsPerRequest, OllamaBackend,
};
use crate::dispatch::{eligible, Models, Probation, CLAIM_AGAIN};
use crate::job::Parser;
use crate::live::Health;
use crate::output::Format;
use crate::report::{
    spawn_progress, ConcurrencyMode, Display, ModelConcurrency, ProgressSource, ServerReport, Summary, WorkflowReport,
};
use crate::store::{
    committed, with_steps_to, Claim, CommittedSink, Forward, PendingJob, SharedRun, StepCount, StepDone, Store,
    StoreError, WriteMsg, Writer,
};
use crate::workflow::{run_servers, FlowStats, GroupConcurrency, ServerPlan, ServerView, Shared, Workflow};

/// Runs `args` through the workflow in `flow`.
pub async fn execute(args: RunArgs, flow: &Path) -> anyhow::Result<Exit> {
    let text = std::fs::read_to_string(flow)
        .map_err(|e| setup_error(format!("cannot read workflow {}: {e}", flow.display())))?;
    let workflow = Workflow::parse(&text).map_err(|e| setup_error(format!("{}: {e}", flow.display())))?;
    check_flags(&args)?;
    if args.dry_run {
        return Ok(dry_run(&workflow));
    }
    let locked = Locked::new(&args)?;
    // Steps are sent one unit a request: the scheduler reads a model switch's cost from the answer that waited
    // for it, which a packed request would share among units of several jobs.
    let opts = ConnectOptions { inputs_per_request: InputsPerRequest::Fixed(1), ..args.connect_options() };
    let base = flow.parent().unwrap_or(Path::new("."));
    let (conns, placement) = connect_servers(&workflow, &args, &opts, base).await?;
    let steps: Vec<(String, String)> = workflow.steps.iter().map(|s| (s.name.clone(), s.fingerprint.clone())).collect();
    let session = locked.open(&args, Identity::Workflow(&steps), &Parser::fields_only(), Format::Workflow).await?;

    let views = conns.iter().map(|c| Mutex::new(ServerView { url: c.backend.url().to_owned(), ..Default::default() }));
    let flow_stats = Arc::new(FlowStats { servers: views.collect(), ..Default::default() });
    let workflow = Arc::new(workflow);
    // The loops' shared state, over the writer their results go to (the state file's, or a round's).
    let loops_over = |writer: Sender<WriteMsg>| {
        Arc::new(Shared {
            probation: Probation::new(workflow.steps.len()),
            taken: Mutex::default(),
            verdict: Mutex::new(None),
            workflow: workflow.clone(),
            writer,
            stats: session.stats.clone(),
            flow: flow_stats.clone(),
            stop: session.stop.clone(),
            hard: CancellationToken::new(),
            max_attempts: args.send.max_attempts,
            progress: tokio::sync::watch::channel(0).0,
        })
    };
    let plans = server_plans(&conns, &placement, &session.stop);
    let views = flow_stats.clone();
    let detail = move || -> String {
        let lines: Vec<String> = views.servers.iter().filter_map(|v| v.lock().ok().map(|v| v.line())).collect();
        lines.join(" || ")
    };
    let finished_before = match session.work.shared() {
        None => session.work.local()?.step_counts()?.iter().map(|c| c.done).sum(),
        Some(_) => (session.before.done + session.before.failed) * steps.len() as u64,
    };
    let progress = spawn_progress(ProgressSource {
        stats: session.stats.clone(),
        limiter: None,
        detail: Some(Arc::new(detail)),
        health: plans[0].health.clone(),
        live: session.live_sink(),
        servers: None,
        finished_before,
        total: session.before.total() * steps.len() as u64,
        status_every: args.status_every,
        display: Display::detect(args.quiet),
        tune: None,
    });
    let concurrency = match args.send.concurrency {
        Concurrency::Fixed(n) => GroupConcurrency::Fixed(n),
        Concurrency::Auto => GroupConcurrency::Auto(args.send.max_concurrency as usize),
    };
    let drain = args.send.drain_timeout;
    let started = Instant::now();
    let (ran, verdict, round_counts) =
        dispatch(&session, &loops_over, plans, &flow_stats, &steps, concurrency, drain).await;
    let wall = started.elapsed();
    progress.finish().await;
    let finished = session.finish_writer().await?;
    ran?;

    let mut step_counts = match round_counts {
        Some(counts) => counts,
        None => finished.work.local()?.step_counts()?,
    };
    step_counts.sort_by_key(|c| steps.iter().position(|(n, _)| *n == c.step).unwrap_or(usize::MAX));
    let report = workflow_report(&flow_stats, &conns, &args.send.concurrency);
    let interrupted = finished.stop.is_cancelled();
    let ran = Ran {
        wall,
        steps: step_counts,
        concurrency: None,
        workflow: Some(report),
        engine: None,
        cache: None,
        servers: Vec::new(),
        packing: None,
    };
    finished.conclude(ran, |summary| outcome(verdict, interrupted, summary)).await
}

/// Runs the scheduling loops over the state file, or in rounds over a shared run's claims. Returns how that
/// went, the verdict that stopped the run (a step's probation), if any, and a shared run's step counts.
async fn dispatch(
    session: &Session,
    loops_over: &dyn Fn(Sender<WriteMsg>) -> Arc<Shared>,
    plans: Vec<ServerPlan>,
    flow: &FlowStats,
    steps: &[(String, String)],
    concurrency: GroupConcurrency,
    drain: std::time::Duration,
) -> (anyhow::Result<()>, Option<String>, Option<Vec<StepCount>>) {
    let Some(run) = session.work.shared() else {
        let shared = loops_over(session.writer.sender());
        let ran = match session.work.local() {
            Ok(reader) => run_servers(reader, shared.clone(), plans, concurrency, drain).await.map_err(Into::into),
            Err(e) => Err(e),
        };
        let verdict = shared.verdict.lock().expect("verdict lock").take();
        return (ran, verdict, None);
    };
    let rounds = Rounds { run, session, steps, plans: &plans, flow };
    match rounds.run(loops_over, concurrency, drain).await {
        Ok((verdict, counts)) => (Ok(()), verdict, Some(counts)),
        Err(e) => (Err(e), None, None),
    }
}

/// Jobs a worker of a shared run claims for one round of its workflow. A round's jobs wait for this worker
/// alone, so a round is kept short of a run's tail; within it the scheduler batches each model's steps as in a
/// run on a state file (a smaller round would switch models more often).
const ROUND_JOBS: usize = 256;

/// A workflow in a run shared through PostgreSQL. The worker claims up to [`ROUND_JOBS`] jobs and runs the
/// workflow over them in a state file of its own (a *round*), exactly as a run on a state file does: steps,
/// schemas, retries, model switches. Each step answered is also kept in the shared run, and each job the round
/// finishes (every step answered, or failed in one) goes to it as one result or error record, all fenced by the
/// job's claim; the round's file is removed once they are written. A worker that dies mid-round loses only the
/// steps in flight: its claims expire, and the worker that takes its jobs goes on from the steps the run kept,
/// so every job is still answered once in the run's output.
struct Rounds<'a> {
    run: &'a SharedRun,
    session: &'a Session,
    steps: &'a [(String, String)],
    plans: &'a [ServerPlan],
    flow: &'a FlowStats,
}

impl Rounds<'_> {
    /// Runs rounds until the run is finished or stopped. Returns the verdict that stopped it (a step's
    /// probation), if any, and the step counts of this worker's rounds.
    async fn run(
        &self,
        loops_over: &dyn Fn(Sender<WriteMsg>) -> Arc<Shared>,
        concurrency: GroupConcurrency,
        drain: std::time::Duration,
    ) -> anyhow::Result<(Option<String>, Vec<StepCount>)> {
        let mut counts: Vec<StepCount> = Vec::new();
        let mut round = 0u64;
        while let Some(jobs) = self.claim().await? {
            round += 1;
            let file = RoundFile::new(round);
            let mut store = Store::open(&file.0)?;
            store.apply_workflow(self.steps)?;
            store.insert_claimed(&jobs)?;
            self.resume(&mut store, &jobs).await?;
            let reader = store.reopen()?;
            let to_run = self.session.writer.sender();
            let writer = Writer::spawn(store, Box::new(Forward::to(to_run.clone())))?;
            let (round_writer, tee) = with_steps_to(to_run, writer.sender())?;
            let shared = loops_over(round_writer);
            let ran = run_servers(&reader, shared.clone(), self.plans_now(), concurrency, drain).await;
            let verdict = shared.verdict.lock().expect("verdict lock").take();
            drop(shared);
            tokio::task::block_in_place(|| {
                let _ = tee.join();
                writer.finish()
            })?;
            ran?;
            for c in reader.step_counts()? {
                match counts.iter_mut().find(|t| t.step == c.step) {
                    Some(t) => {
                        (t.done, t.invalid, t.failed) = (t.done + c.done, t.invalid + c.invalid, t.failed + c.failed)
                    }
                    None => counts.push(c),
                }
            }
            // The round's jobs are in the shared run before its file goes (a database away: this waits for it).
            committed(&self.session.writer.sender()).await?;
            if verdict.is_some() {
                return Ok((verdict, counts));
            }
        }
        Ok((None, counts))
    }

    /// Puts into the round's state the steps the run kept for its jobs (a worker that held them before recorded
    /// them), so they are not sent again; a job they finish goes to the run at once.
    async fn resume(&self, store: &mut Store, jobs: &[PendingJob]) -> anyhow::Result<()> {
        let kept = self.run.steps_of(jobs.iter().map(|j| j.seq).collect()).await?;
        let current = |s: &StepDone| self.steps.iter().position(|(n, f)| *n == s.step && *f == s.fingerprint);
        let steps: Vec<StepDone> = kept
            .into_iter()
            .filter_map(|s| current(&s).map(|ord| StepDone { ord, steps_total: self.steps.len(), ..s }))
            .collect();
        if steps.is_empty() {
            return Ok(());
        }
        let mut forward = Forward::to(self.session.writer.sender());
        for row in store.insert_steps(&steps)? {
            forward.write_done(&row)?;
        }
        eprintln!("went on from {} steps other workers had answered", steps.len());
        Ok(())
    }

    /// The next round's jobs: up to [`ROUND_JOBS`], waiting while other workers hold the rest; `None` once the
    /// run is finished or this worker is stopped.
    async fn claim(&self) -> Result<Option<Vec<PendingJob>>, StoreError> {
        let stop = &self.session.stop;
        while !stop.is_cancelled() {
            match self.run.claim(ROUND_JOBS).await? {
                Claim::Jobs(jobs) => return Ok(Some(jobs)),
                Claim::Exhausted => return Ok(None),
                Claim::Later => tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(CLAIM_AGAIN) => {}
                },
            }
        }
        Ok(None)
    }

    /// The plans for the next round: each server starts on the model it was left with.
    fn plans_now(&self) -> Vec<ServerPlan> {
        let mut plans = self.plans.to_vec();
        for (plan, view) in plans.iter_mut().zip(&self.flow.servers) {
            if let Some(model) = view.lock().expect("server view lock").model.clone() {
                plan.loaded = vec![model];
            }
        }
        plans
    }
}

/// A round's state file, in the temporary directory, removed (with its WAL files) when dropped.
struct RoundFile(PathBuf);

const ROUND_FILE: &str = "inflight-round-";

impl RoundFile {
    fn new(round: u64) -> RoundFile {
        if round == 1 {
            RoundFile::sweep();
        }
        let name = format!("{ROUND_FILE}{}-{round}.sqlite", std::process::id());
        let file = RoundFile(std::env::temp_dir().join(name));
        file.remove();
        file
    }

    /// Removes the round files a killed worker left behind: those of a process that is gone (where `/proc`
    /// says which are alive).
    fn sweep() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(ROUND_FILE).and_then(|rest| rest.split('-').next());
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for RoundFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The exit code a workflow run's end means, or the error that stops the command (`verdict`: a step's
/// probation stopped the run).
fn outcome(verdict: Option<String>, interrupted: bool, summary: &Summary) -> Result<Exit, CommandError> {
    match verdict {
        Some(message) => Err(CommandError {
            exit: Exit::Setup,
            message: format!(
                "stopped: {message}\nNothing was recorded for those jobs; fix the step and run again (steps that \
                 finished are kept)."
            ),
        }),
        None if interrupted && summary.pending > 0 => Ok(Exit::Interrupted),
        None if summary.failed > 0 || summary.bad_lines > 0 => Ok(Exit::SomeFailed),
        None => Ok(Exit::Success),
    }
}

/// What each server's loop ended with: switches, time switching, each model's concurrency.
fn workflow_report(flow: &FlowStats, conns: &[Connection], concurrency: &Concurrency) -> WorkflowReport {
    let servers = flow.servers.iter().zip(conns).map(|(view, conn)| {
        let v = view.lock().expect("server view lock");
        let models = v.tuning.iter().map(|(m, held, phase)| ModelConcurrency { model: m.clone(), held: *held, phase });
        ServerReport {
            url: v.url.clone(),
            switches: v.switches,
            switching_s: v.switching.as_secs_f64(),
            server_slots: conn.info.kind.lanes(),
            models: models.collect(),
        }
    });
    WorkflowReport {
        mode: match concurrency {
            Concurrency::Fixed(_) => ConcurrencyMode::Fixed,
            Concurrency::Auto => ConcurrencyMode::Auto,
        },
        invalid_answers: flow.invalid.load(Ordering::Relaxed),
        servers: servers.collect(),
    }
}

/// `--dry-run`: the steps, their models and what they read; nothing is sent.
fn dry_run(workflow: &Workflow) -> Exit {
    for (i, s) in workflow.steps.iter().enumerate() {
        let deps = workflow.dep_names(i);
        println!("step {} (line {}): model {}, reads [{}]", s.name, s.line, s.model, deps.join(", "));
    }
    println!("dry run: the workflow is valid; nothing sent");
    Exit::Success
}

/// One plan per connection, with the steps `placement` puts on it.
fn server_plans(conns: &[Connection], placement: &[Vec<usize>], stop: &CancellationToken) -> Vec<ServerPlan> {
    let plan = |(i, c): (usize, &Connection)| ServerPlan {
        backend: c.backend.clone(),
        kind: c.info.kind,
        health: Health::new(c.backend.clone(), stop.clone()),
        steps: (0..placement.len()).filter(|&s| placement[s].contains(&i)).collect(),
        loaded: c.info.loaded.clone().unwrap_or_default(),
    };
    conns.iter().enumerate().map(plan).collect()
}

/// Flags of the one-step path that a workflow sets per step instead.
fn check_flags(args: &RunArgs) -> anyhow::Result<()> {
    if let Some(model) = &args.engine.engine {
        return Err(setup_error(format!(
            "--engine {} cannot be used with --workflow: name the GGUF file in the steps' `model:` (a step whose \
             model is a .gguf file runs on the embedded engine)",
            model.display()
        )));
    }
    let per_step = [
        ("--model", args.model.is_some()),
        ("--system", args.job.system.is_some()),
        ("--max-tokens", args.max_tokens.is_some()),
        ("--temperature", args.temperature.is_some()),
        ("--seed", args.seed.is_some()),
        ("--completions", args.completions),
        ("--limit", args.limit.is_some()),
        ("--format", args.format != Format::Batch),
        // Ollama's runner options stay run-wide flags (every request must carry the same); the rest are per step.
        ("--param (other than num_ctx, num_batch, num_gpu, num_thread)", {
            OllamaBackend::runner_options_of(&args.params).len() < args.params.len()
        }),
    ];
    let given: Vec<&str> = per_step.iter().filter(|(_, set)| *set).map(|(f, _)| *f).collect();
    if given.is_empty() {
        return Ok(());
    }
    Err(setup_error(format!(
        "{} cannot be used with --workflow: set models, messages and parameters in the workflow's steps",
        given.join(", ")
    )))
}

/// Whether a step's model is a GGUF file (run on the embedded engine) rather than a server's model name.
fn is_gguf(model: &str) -> bool {
    model.to_ascii_lowercase().ends_with(".gguf")
}

/// Connects to every server: the `--server` flags in order, then servers that only steps name, then the
/// embedded engine for the steps whose model is a GGUF file (relative paths are read from the workflow file's
/// directory). Returns the connections and, per step, the indexes of its connections (a server step naming none
/// runs on every server that lists its model).
async fn connect_servers(
    workflow: &Workflow,
    args: &RunArgs,
    opts: &ConnectOptions,
    base: &Path,
) -> anyhow::Result<(Vec<Connection>, Vec<Vec<usize>>)> {
    let mut urls: Vec<String> = args.conn.server.iter().map(|u| normalize(u)).collect();
    let mut engine_models: Vec<String> = Vec::new();
    for s in &workflow.steps {
        if is_gguf(&s.model) {
            if let Some(url) = &s.server {
                return Err(setup_error(format!(
                    "step {} (line {}): model {} is a GGUF file, run on the embedded engine; it cannot also name \
                     server {url}",
                    s.name, s.line, s.model
                )));
            }
            if !engine_models.contains(&s.model) {
                engine_models.push(s.model.clone());
            }
        } else if let Some(url) = s.server.as_deref().map(normalize) {
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    if engine_models.is_empty() {
        if let Some(flag) = args.engine.setting_given() {
            return Err(setup_error(format!(
                "{flag} is an engine setting, but no step's model is a GGUF file (.gguf) to run on the engine"
            )));
        }
    }
    let mut conns = Vec::new();
    if urls.is_empty() && workflow.steps.iter().any(|s| !is_gguf(&s.model)) {
        conns.push(connect(None, args.conn.api, opts).await.map_err(|e| setup_error(e.to_string()))?);
    }
    for url in &urls {
        conns.push(connect(Some(url), args.conn.api, opts).await.map_err(|e| setup_error(e.to_string()))?);
    }
    let engine_at = conns.len();
    if !engine_models.is_empty() {
        let files = engine_models.into_iter().map(|m| (base.join(&m), m)).map(|(path, m)| (m, path)).collect();
        conns.push(engine_pool(files, args).await?);
    }
    let mut placement = Vec::new();
    for s in &workflow.steps {
        if is_gguf(&s.model) {
            placement.push(vec![engine_at]);
            continue;
        }
        let on = match s.server.as_deref() {
            Some(u) => vec![urls.iter().position(|x| *x == normalize(u)).unwrap_or(0)],
            None => servers_for(&s.model, &conns[..engine_at]),
        };
        for &i in &on {
            let conn = &conns[i];
            if conn.backend.api() == Api::Ollama && !conn.info.models.iter().any(|m| names_model(m, &s.model)) {
                return Err(setup_error(format!(
                    "step {} (line {}): model {:?} is not on the Ollama server at {}; pull it with `ollama pull {}`",
                    s.name,
                    s.line,
                    s.model,
                    conn.backend.url(),
                    s.model
                )));
            }
        }
        placement.push(on);
    }
    Ok((conns, placement))
}

/// The servers a step that names none runs on: every one that lists its model (the rule a one-step run routes
/// jobs by), each at its own pace from the same ready work; else the first server.
fn servers_for(model: &str, conns: &[Connection]) -> Vec<usize> {
    let models: Vec<Models> = conns.iter().map(models_of).collect();
    let refs: Vec<&Models> = models.iter().collect();
    match eligible(&refs, Some(model)) {
        none if none.is_empty() => vec![0],
        some => some,
    }
}

/// The embedded engine for the workflow's GGUF models (each as the steps name it, and its file).
#[cfg(feature = "engine")]
async fn engine_pool(files: Vec<(String, std::path::PathBuf)>, args: &RunArgs) -> anyhow::Result<Connection> {
    use crate::backend::{default_budget, Backend, EnginePool};
    let config = args.engine.config(&files[0].1, args.send.max_concurrency);
    let budget = args.engine.engine_memory.unwrap_or_else(default_budget);
    let pool = EnginePool::open(files, config, budget).await.map_err(setup_error)?;
    let info = pool.probe().await.map_err(|e| setup_error(e.to_string()))?;
    Ok(Connection { backend: std::sync::Arc::new(pool), info })
}

/// Without the engine, GGUF steps cannot run.
#[cfg(not(feature = "engine"))]
async fn engine_pool(files: Vec<(String, std::path::PathBuf)>, _args: &RunArgs) -> anyhow::Result<Connection> {
    Err(setup_error(format!(
        "step model {}: this inflight was built without its engine (cargo feature `engine`), which runs GGUF files; \
         rebuild with it, or serve the model and name its server",
        files[0].0
    )))
}
