//! The run session below `inflight run`'s two modes: lock the state, open it and check the run's identity,
//! ingest, reconcile the output files, start the writer and the signal handler; after the mode's dispatcher
//! ran, summarize and map the ending to the exit code. A mode (one step per line, `--workflow`, later others)
//! only connects to its servers, says what identifies its run, and dispatches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::common::{setup_error, CommandError, Exit};
use super::jobs::check_input;
use super::run_args::RunArgs;
use super::state::{check_dir_of, default_state_path, lock, remove_state, Leftovers, RunLock};
use crate::dispatch::Source;
use crate::job::Parser;
use crate::live::LiveStats;
use crate::output::{errors_path, Format, OutputFiles};
use crate::report::{
    ConcurrencyReport, EngineReport, ExitReport, FilesReport, RunSummary, Summary, SummaryInput, WorkflowReport,
};
use crate::store::{Counts, Follower, PgUrl, SharedRun, StepCount, Store, WriteMsg, Writer, WriterHandle};

/// What identifies a run, besides its input: a state begun one way refuses to go on another.
pub(super) enum Identity<'a> {
    /// A one-step run: the parser's fingerprint (model, template, system, generation parameters).
    Settings(&'a str),
    /// A workflow run (its steps are checked one by one, `Store::apply_workflow`).
    Workflow(&'a [(String, String)]),
}

/// A state locked for this process; nothing is opened yet (a `--restart` against a wrong server must not
/// cost the old state, so the mode connects before [`Locked::open`]).
pub(super) struct Locked {
    at: StateAt,
    stop: Option<CancellationToken>,
}

/// Where the run's state is.
enum StateAt {
    /// A state file this process owns, locked.
    File {
        out: PathBuf,
        state: PathBuf,
        // Before `lock`: the files are removed while the lock is still held.
        leftovers: Leftovers,
        lock: RunLock,
    },
    /// A run shared through PostgreSQL; `out`, this worker's copy of the output.
    Shared { url: Box<PgUrl>, out: Option<PathBuf> },
}

impl Locked {
    /// Checks the input and the directories the run writes in, then locks the state of the run that writes
    /// `args`' output. Until [`Locked::open`] succeeds, a refused run removes the files it made.
    pub fn new(args: &RunArgs) -> anyhow::Result<Locked> {
        if let Some(url) = args.shared_state()? {
            if let Some(input) = &args.input {
                check_input(input)?;
            }
            if let Some(out) = &args.output {
                check_dir_of("the output", out)?;
            }
            return Ok(Locked { at: StateAt::Shared { url: Box::new(url), out: args.output.clone() }, stop: None });
        }
        let Some(out) = args.output.clone() else {
            return Err(setup_error("-o OUT.jsonl is required (except with --dry-run, or a postgres:// --state)"));
        };
        let input = args.input()?;
        let state = args.state.clone().unwrap_or_else(|| default_state_path(&out));
        check_input(input)?;
        check_dir_of("the output", &out)?;
        check_dir_of("the state", &state)?;
        let leftovers = Leftovers::absent(&state, &[out.clone(), errors_path(&out)]);
        let lock = lock(&state)?;
        Ok(Locked { at: StateAt::File { out, state, leftovers, lock }, stop: None })
    }

    /// Stopped by `stop` (it drains as after Ctrl-C) instead of by this process's signals; `None` changes nothing.
    pub fn stopped_by(self, stop: Option<CancellationToken>) -> Locked {
        Locked { stop, ..self }
    }

    /// The stop token: the caller's, or one cancelled by this process's first Ctrl-C or SIGTERM.
    fn stop_token(stop: Option<CancellationToken>, args: &RunArgs) -> (CancellationToken, bool) {
        match stop {
            Some(stop) => (stop, false),
            None => {
                let stop = CancellationToken::new();
                spawn_signal_handler(stop.clone(), args.send.drain_timeout);
                (stop, true)
            }
        }
    }

    /// Opens the state (anew with `--restart`), checks the run's identity, ingests the input with `parser`,
    /// reconciles the output files in `format` and starts the writer and the signal handler.
    pub async fn open(
        self,
        args: &RunArgs,
        identity: Identity<'_>,
        parser: &Parser,
        format: Format,
    ) -> anyhow::Result<Session> {
        let Locked { at, stop } = self;
        let (out, state, mut leftovers, lock) = match at {
            StateAt::File { out, state, leftovers, lock } => (out, state, leftovers, lock),
            StateAt::Shared { url, out } => {
                // A shared workflow run is its steps (names and fingerprints): a worker with another workflow is
                // refused, where a state file keeps the results of the steps that did not change.
                let fingerprint = match identity {
                    Identity::Settings(f) => f.to_owned(),
                    Identity::Workflow(steps) => format!("workflow {}", serde_json::to_string(steps)?),
                };
                let joined = super::shared::join(args, *url.clone(), fingerprint, parser, format).await?;
                let writer = joined.run.writer()?;
                let follower = match &out {
                    Some(out) => Some(joined.run.follow(Box::new(OutputFiles::create(out, format)?))?),
                    None => None,
                };
                let (stop, signals) = Locked::stop_token(stop, args);
                let how = Ending { json: args.json, signals };
                return Ok(Session {
                    work: RunWork::Shared { run: Box::new(joined.run), follower },
                    writer,
                    stop,
                    stats: Arc::new(LiveStats::default()),
                    before: joined.before,
                    out,
                    state: url.to_string(),
                    how,
                    _lock: None,
                });
            }
        };
        if args.restart {
            remove_state(&state)
                .with_context(|| format!("cannot remove the old state {} (--restart)", state.display()))?;
            leftovers.add_state(&state);
        }
        let mut store =
            Store::open(&state).map_err(|e| setup_error(format!("cannot open the state {}: {e}", state.display())))?;
        let fresh = check_identity(&store, &identity, args, &state)?;
        ingest(&mut store, args, parser, fresh).await?;
        let mut rebuild = match identity {
            Identity::Settings(_) => store.meta("format")?.is_some_and(|f| f != format.name()),
            Identity::Workflow(steps) => store.apply_workflow(steps)?,
        };
        store.set_meta("format", format.name())?;
        let absolute =
            std::path::absolute(&out).with_context(|| format!("cannot resolve the output {}", out.display()))?;
        store.set_meta("output", &absolute.to_string_lossy())?;
        if args.retry_failed {
            let n = store.reopen_failed()?;
            eprintln!("--retry-failed: {n} failed jobs will be sent again");
            rebuild |= n > 0;
        }
        let before = store.counts()?;
        let files = OutputFiles::open(&out, &store, format, rebuild)?;
        let reader = store.reopen()?;
        let writer = Writer::spawn(store, Box::new(files))?;
        let (stop, signals) = Locked::stop_token(stop, args);
        let stats = Arc::new(LiveStats::default());
        leftovers.keep();
        let how = Ending { json: args.json, signals };
        Ok(Session {
            work: RunWork::Local(reader),
            writer,
            stop,
            stats,
            before,
            out: Some(out),
            state: state.display().to_string(),
            how,
            _lock: Some(lock),
        })
    }
}

/// Where a run's work comes from and its counts are read.
pub(super) enum RunWork {
    /// A state file this process owns: a read connection to it.
    Local(Store),
    /// This worker's part in a run shared through PostgreSQL, and its local copy of the output (`-o`).
    Shared { run: Box<SharedRun>, follower: Option<Follower> },
}

impl RunWork {
    /// Where the dispatcher takes its jobs from.
    pub fn source(&self) -> Source<'_> {
        match self {
            RunWork::Local(reader) => Source::local(reader),
            RunWork::Shared { run, .. } => Source::Shared(run),
        }
    }

    /// The state file (what a workflow run and the engine's sizing read); a shared run has none.
    pub fn local(&self) -> anyhow::Result<&Store> {
        match self {
            RunWork::Local(reader) => Ok(reader),
            RunWork::Shared { .. } => Err(setup_error("this needs a state file, not a PostgreSQL state")),
        }
    }

    /// This worker's part in a run shared through PostgreSQL; `None` on a state file.
    pub fn shared(&self) -> Option<&SharedRun> {
        match self {
            RunWork::Local(_) => None,
            RunWork::Shared { run, .. } => Some(run),
        }
    }

    /// The models the pending jobs name, to check against the servers before sending. A shared run's workers
    /// each have their own servers: not checked there (a server refuses a job whose model it lacks).
    pub fn pending_models(&self) -> anyhow::Result<Vec<String>> {
        match self {
            RunWork::Local(reader) => Ok(reader.pending_models()?),
            RunWork::Shared { .. } => Ok(Vec::new()),
        }
    }

    /// The first `n` unfinished jobs (what the engine is sized from).
    pub async fn sample(&self, n: usize) -> anyhow::Result<Vec<crate::store::PendingJob>> {
        match self {
            RunWork::Local(reader) => Ok(reader.pending_page(-1, n)?),
            RunWork::Shared { run, .. } => Ok(run.sample(n).await?),
        }
    }

    async fn totals(&self) -> anyhow::Result<(Counts, hdrhistogram::Histogram<u64>)> {
        match self {
            RunWork::Local(reader) => Ok((reader.counts()?, reader.latency_histogram()?)),
            RunWork::Shared { run, .. } => Ok(run.totals().await?),
        }
    }
}

/// An open run: the state, its writer, the stop token (signals), this session's counters.
pub(super) struct Session {
    /// Where the run's jobs come from and its counts are read.
    pub work: RunWork,
    /// The one writer.
    pub writer: WriterHandle,
    /// Cancelled by Ctrl-C / SIGTERM, or by a mode's verdict.
    pub stop: CancellationToken,
    /// This session's counters.
    pub stats: Arc<LiveStats>,
    /// The state's counts before this session sent anything.
    pub before: Counts,
    out: Option<PathBuf>,
    /// The state, as shown (a file's path, or a PostgreSQL URL without its password).
    state: String,
    how: Ending,
    _lock: Option<RunLock>,
}

/// How the session ends: the summary as JSON (`--json`), and whether this process's signals stop it.
#[derive(Debug, Clone, Copy)]
struct Ending {
    json: bool,
    signals: bool,
}

/// How a mode's dispatch went, for the summary.
pub(super) struct Ran {
    /// Wall time of the dispatch.
    pub wall: Duration,
    /// Per-step counts (workflows).
    pub steps: Vec<StepCount>,
    /// A one-step run's concurrency.
    pub concurrency: Option<ConcurrencyReport>,
    /// A workflow run's servers and models.
    pub workflow: Option<WorkflowReport>,
    /// What the embedded engine chose and measured (`--engine` runs).
    pub engine: Option<EngineReport>,
    /// What the run did with the response cache (one-step runs that use it).
    pub cache: Option<crate::cache::CacheReport>,
    /// Each server's share of a run over several (empty for one).
    pub servers: Vec<crate::report::ServerShare>,
    /// How embedding inputs were packed (a one-step run's first server, when it packed any).
    pub packing: Option<crate::backend::PackReport>,
}

impl Session {
    /// A sink for the progress display's `live` blob: the session keeps it in the state, where
    /// `inflight status` reads it.
    pub fn live_sink(&self) -> Box<dyn Fn(String) + Send + Sync> {
        let writer = self.writer.sender();
        Box::new(move |blob| {
            let _ = writer.send(WriteMsg::Live(blob));
        })
    }

    /// Commits what is left; the error that stopped the writer, if it failed. A shared run then releases the
    /// claims this worker still holds and brings its copy of the output up to date.
    pub async fn finish_writer(self) -> anyhow::Result<Finished> {
        let Session { mut work, writer, stop, stats, before, out, state, how, _lock } = self;
        writer.finish().with_context(|| format!("recording results (state {state})"))?;
        if let RunWork::Shared { run, follower } = &mut work {
            let released = run.release().await.context("releasing this worker's claims")?;
            if released > 0 {
                eprintln!("released {released} claimed jobs for the other workers");
            }
            if run.stale() > 0 {
                eprintln!(
                    "{} answers recorded nothing: their claims had expired and other workers took the jobs",
                    run.stale()
                );
            }
            if let Some(follower) = follower.take() {
                tokio::task::spawn_blocking(move || follower.finish())
                    .await?
                    .context("writing this worker's copy of the output")?;
            }
        }
        Ok(Finished { work, stop, stats, before, out, state, how, _lock })
    }
}

/// A session whose writer has committed everything.
pub(super) struct Finished {
    /// Where the run's counts are read.
    pub work: RunWork,
    /// Whether the run was stopped (signals, a verdict).
    pub stop: CancellationToken,
    stats: Arc<LiveStats>,
    before: Counts,
    out: Option<PathBuf>,
    state: String,
    how: Ending,
    _lock: Option<RunLock>,
}

impl Finished {
    /// Prints the summary (text on stdout or, with `--json`, one JSON object on stdout and the text on stderr)
    /// and returns the exit code `outcome` gives for it, or the error that stopped the run.
    pub async fn conclude(
        self,
        ran: Ran,
        outcome: impl FnOnce(&Summary) -> Result<Exit, CommandError>,
    ) -> anyhow::Result<Exit> {
        let finished_before = self.before.done + self.before.failed;
        let (counts, latency) = self.work.totals().await?;
        let tokens = self.stats.completion_tokens.load(std::sync::atomic::Ordering::Relaxed);
        let summary = Summary::new(SummaryInput {
            counts,
            latency,
            session: Some(((counts.done + counts.failed).saturating_sub(finished_before), tokens, ran.wall)),
            retries: self.stats.retries.load(std::sync::atomic::Ordering::Relaxed),
            cached_prompt_tokens: self.stats.cached_prompt_tokens.load(std::sync::atomic::Ordering::Relaxed),
            steps: ran.steps,
        });
        let outcome = outcome(&summary);
        let exit = match &outcome {
            Ok(exit) => ExitReport { code: *exit as i32, meaning: exit.meaning(), message: None },
            Err(e) => ExitReport { code: e.exit as i32, meaning: e.exit.meaning(), message: Some(e.message.clone()) },
        };
        let shown = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
        let files = FilesReport {
            results: shown(self.out.clone()),
            errors: shown(self.out.as_deref().map(errors_path)),
            state: self.state.clone(),
        };
        let report = RunSummary {
            engine: ran.engine,
            summary,
            concurrency: ran.concurrency,
            workflow: ran.workflow,
            cache: ran.cache,
            packing: ran.packing,
            servers: ran.servers,
            files,
            exit,
        };
        if self.how.json {
            eprintln!("{}", report.render());
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.render());
        }
        // A run stopped from outside (serve's cancel or shutdown) is not the user's to run again.
        if matches!(outcome, Ok(Exit::Interrupted)) && self.how.signals {
            eprintln!("interrupted: run the same command again to resume ({} jobs pending)", report.summary.pending);
        }
        outcome.map_err(Into::into)
    }
}

/// Refuses a state that was begun another way (other settings, or with/without `--workflow`). Returns whether
/// the state is new.
fn check_identity(store: &Store, identity: &Identity, args: &RunArgs, state: &Path) -> anyhow::Result<bool> {
    let settings = match identity {
        Identity::Settings(fingerprint) => *fingerprint,
        Identity::Workflow(_) => "workflow",
    };
    let refused = match (store.meta("settings")?.as_deref(), identity) {
        (None, _) => {
            store.set_meta("settings", settings)?;
            store.set_meta("input", &args.input()?.to_string_lossy())?;
            return Ok(true);
        }
        (Some(f), _) if f == settings => return Ok(false),
        (Some(_), Identity::Settings(_)) => "belongs to a run with other settings (model, template, system or \
            generation parameters).\nPass --restart to start over with these settings, or --state to start a separate run.",
        (Some(_), Identity::Workflow(_)) => {
            "belongs to a run without --workflow; pass --restart to start over, or --state for a separate run"
        }
    };
    Err(setup_error(format!("{} {refused}", state.display())))
}

/// Ingests the input (or the rest of it), or, for a complete ingest, checks the input did not change.
async fn ingest(store: &mut Store, args: &RunArgs, parser: &Parser, fresh: bool) -> anyhow::Result<()> {
    let input = args.input()?;
    let mut reader = args.job.open(input, parser)?;
    let done_lines: u64 = store.meta("ingest_lines")?.and_then(|v| v.parse().ok()).unwrap_or(0);
    let recorded_sha = store.meta("ingest_sha256")?;
    let changed = || {
        setup_error(format!(
            "the input {} changed since this run began; pass --restart to start over with it",
            input.display()
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
        if !reader.at_end()? {
            return Err(changed());
        }
        return Ok(());
    }
    let started = Instant::now();
    let report = tokio::task::block_in_place(|| {
        store.ingest(&mut reader, |lines| {
            if started.elapsed() > Duration::from_secs(2) && !args.quiet {
                eprintln!("ingesting: {lines} lines");
            }
        })
    })?;
    tracing::info!(jobs = report.jobs, bad_lines = report.bad_lines, "ingested in {:?}", started.elapsed());
    Ok(())
}

/// The next Ctrl-C or SIGTERM (`run`'s and `serve`'s handlers).
pub(super) async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) {
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
fn spawn_signal_handler(stop: CancellationToken, drain: Duration) {
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
