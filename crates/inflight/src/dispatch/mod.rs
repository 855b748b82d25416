//! The run loop: claim pending jobs page by page, send each under a permit from the [`Limiter`], retry
//! transient failures, and hand every outcome to the recorder. It never decides how many requests to send.
//!
//! Stopping: the `stop` token (Ctrl-C, SIGTERM, or the recorder's verdict) ends claiming; requests in flight get
//! `drain_timeout` to finish and be recorded; then the rest are cancelled and stay pending for the next run.

mod attempt;
mod order;
mod probation;
mod recorder;
pub(crate) mod retry;
mod targets;

pub use attempt::{Attempts, Lane, Request, Tried, Work};
pub use probation::{Judged, Probation, PROBATION};
pub use recorder::{Outcome, Verdict};
pub use targets::{eligible, Models, Target, TargetChange, TargetCounts, OUTAGES_BEFORE_CRASHED};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{Answer, BackendError};
use crate::cache::ResponseCache;
use crate::code::ErrorCode;
use crate::job::Endpoint;
use crate::live::LiveStats;
use crate::store::{now_ms, AttemptKey, Claim, Completion, PendingJob, SharedRun, Store, StoreError, WriteMsg};
use crate::tune::{Permit, Sample, SampleOutcome};
use order::{InFlight, Picked, Window};
use targets::{acquire_any, Refusal, Routed};

const PAGE: usize = 1024;
/// The most jobs a shared run's worker claims at once. Its servers' limits say how many it can run at once, but
/// a controller still climbing can hold a limit far above what the server sustains, and jobs claimed and not yet
/// sent wait for this worker alone: at the end of a run the others would have nothing left to do while it works
/// through them (measured: one worker of four holding the last 1,300 jobs, ratio 0.75 instead of 0.98).
const CLAIM_MAX: usize = 64;
/// How long the claim loop (and a workflow worker's round) waits before claiming again when a shared run has
/// nothing claimable now.
pub const CLAIM_AGAIN: Duration = Duration::from_millis(250);

/// Where the claim loop takes its jobs from.
pub enum Source<'a> {
    /// The run's state file, which this process owns: pending jobs page by page in store order.
    Local {
        /// A read connection to the state.
        reader: &'a Store,
        /// The last sequence number handed out.
        cursor: i64,
    },
    /// A run shared through PostgreSQL: jobs claimed a few at a time, as leases.
    Shared(&'a SharedRun),
}

impl Source<'_> {
    /// This process's state file, from its first pending job.
    pub fn local(reader: &Store) -> Source<'_> {
        Source::Local { reader, cursor: 0 }
    }

    /// The next jobs to send: a page of the state file's, or a claim of about `want` from the shared run.
    async fn next(&mut self, want: usize) -> Result<Claim, StoreError> {
        match self {
            Source::Local { reader, cursor } => {
                let page = reader.pending_page(*cursor, PAGE)?;
                Ok(match page.last() {
                    Some(last) => {
                        *cursor = last.seq;
                        Claim::Jobs(page)
                    }
                    None => Claim::Exhausted,
                })
            }
            Source::Shared(run) => run.claim(want.clamp(8, CLAIM_MAX)).await,
        }
    }
}

/// How the dispatcher behaves.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Attempts per job before it fails (transient errors only; permanent ones fail at once).
    pub max_attempts: u32,
    /// How long requests in flight may finish after a stop.
    pub drain_timeout: Duration,
    /// Send at most this many jobs in this session (the first ones in file order: no reordering then).
    pub limit: Option<u64>,
    /// Send the jobs of each page with a shared prompt prefix together, families dealt over the requests in
    /// flight ([`order::Window`]).
    pub prefix_order: bool,
}

/// How a dispatch ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// Every pending job was sent and recorded (or `--limit` was reached).
    Finished,
    /// Stopped by a signal; unfinished jobs stay pending.
    Interrupted,
    /// Stopped by the recorder's verdict.
    Aborted(Verdict),
}

/// Everything a job task needs.
struct Ctx {
    outcomes: UnboundedSender<Outcome>,
    /// What a target's attempt path is built from (targets can join while the run goes).
    writer: Sender<WriteMsg>,
    stats: Arc<LiveStats>,
    /// Other servers can take the work of one that goes away.
    reroute: bool,
    cache: Option<Arc<ResponseCache>>,
    config: DispatchConfig,
    stop: CancellationToken,
    hard: CancellationToken,
    /// Jobs handed back by a target that went away, sent again before new ones.
    returned: Mutex<VecDeque<PendingJob>>,
    returned_ready: Notify,
    /// Per job: the outages of its server it was in flight for.
    outages: Mutex<HashMap<i64, u32>>,
    /// The servers set aside by their trial, each with why.
    set_aside: Mutex<Vec<String>>,
}

/// What the dispatcher works with.
pub struct Wiring {
    /// The servers (at least one).
    pub targets: Vec<Target>,
    /// The store's writer.
    pub writer: Sender<WriteMsg>,
    /// Live counters.
    pub stats: Arc<LiveStats>,
    /// Cancelled to stop the run (signals, the recorder's verdict).
    pub stop: CancellationToken,
    /// Answers to requests already answered in earlier runs (`None`: `--cache off`).
    pub cache: Option<Arc<ResponseCache>>,
    /// Servers joining and leaving while the run goes (`--servers-file`); `None`: the targets are fixed.
    pub changes: Option<UnboundedReceiver<TargetChange>>,
}

/// Runs until every pending job is recorded, or until `stop`.
pub async fn dispatch(source: Source<'_>, wiring: Wiring, config: DispatchConfig) -> Result<Ending, StoreError> {
    let Wiring { targets, writer, stats, stop, cache, changes } = wiring;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hard = CancellationToken::new();
    let recorder = tokio::spawn(recorder::record(rx, writer.clone(), stats.clone(), [stop.clone(), hard.clone()]));
    let ctx = Arc::new(Ctx {
        outcomes: tx,
        writer,
        stats,
        // With other servers to take it, work in flight on a server that goes away is handed back at once.
        reroute: targets.len() > 1 || changes.is_some(),
        cache,
        config,
        stop: stop.clone(),
        hard,
        returned: Mutex::new(VecDeque::new()),
        returned_ready: Notify::new(),
        outages: Mutex::new(HashMap::new()),
        set_aside: Mutex::new(Vec::new()),
    });
    let targets = targets.into_iter().map(|t| ctx.route(t)).collect();
    let mut tasks = JoinSet::new();
    let claimed = claim_loop(source, &ctx, &mut tasks, targets, changes).await;
    drain(&mut tasks, &ctx.stop, &ctx.hard, ctx.config.drain_timeout).await;
    let signalled = stop.is_cancelled();
    drop(ctx);
    let verdict = recorder.await.unwrap_or(Some(Verdict::WriterFailed));
    claimed?;
    Ok(match verdict {
        Some(v) => Ending::Aborted(v),
        None if signalled => Ending::Interrupted,
        None => Ending::Finished,
    })
}

impl Ctx {
    /// A target as the job tasks use it: its attempt path over this run's writer, counters and stop tokens.
    fn route(&self, t: Target) -> Arc<Routed> {
        Arc::new(Routed {
            attempts: Attempts {
                backend: t.backend,
                health: t.health,
                writer: self.writer.clone(),
                stats: self.stats.clone(),
                max_attempts: self.config.max_attempts,
                stop: self.stop.clone(),
                hard: self.hard.clone(),
                reroute: self.reroute,
            },
            limiter: t.limiter,
            samples: t.samples,
            models: t.models,
            counts: t.counts,
            lanes: t.lanes,
            retired: AtomicBool::new(false),
            trial: Default::default(),
        })
    }

    /// Answers a picked job from the response cache if it holds its request (then it is not sent: `None`).
    fn answer_from_cache(&self, picked: Picked) -> Option<Picked> {
        let Some(answer) = self.cache.as_ref().and_then(|c| c.lookup(picked.job.endpoint, &picked.job.body)) else {
            return Some(picked);
        };
        if !self.stop.is_cancelled() {
            let job = picked.job;
            let attempts = job.attempts;
            let _ = self.outcomes.send(Outcome::Done(Box::new(completion(job, answer, attempts, now_ms()))));
        }
        None
    }

    /// Queues `job` to be sent again, ahead of new ones, by whichever server takes it.
    fn hand_on(&self, job: PendingJob) {
        self.returned.lock().expect("returned lock").push_back(job);
        self.returned_ready.notify_one();
    }

    /// Takes a server that refuses everything out of the run, saying so.
    fn set_aside(&self, target: &Routed, why: String) {
        if !target.retired.swap(true, Ordering::Relaxed) {
            let url = target.attempts.backend.url();
            eprintln!("server {url} set aside: {why}; the others go on");
            self.set_aside.lock().expect("set-aside lock").push(format!("{url}: {why}"));
        }
    }

    /// Applies a change to the run's targets: a server joins (or comes back), or leaves.
    fn apply(&self, targets: &mut Vec<Arc<Routed>>, change: TargetChange) {
        let url = match &change {
            TargetChange::Add(t) => t.backend.url().to_owned(),
            TargetChange::Retire(url) => url.clone(),
        };
        let known = targets.iter().find(|t| t.attempts.backend.url() == url);
        match (change, known) {
            (TargetChange::Add(_), Some(t)) => t.retired.store(false, Ordering::Relaxed),
            (TargetChange::Add(t), None) => targets.push(self.route(t)),
            (TargetChange::Retire(_), Some(t)) => t.retired.store(true, Ordering::Relaxed),
            (TargetChange::Retire(_), None) => {}
        }
    }
}

/// The targets a job naming `model` may go to: the active ones that have its model. A job none of them has
/// (every pending job's model was checked against the servers before the run) may go to any active one, which
/// answers or refuses it as a single server would. Empty only when no target is active.
fn route_for(targets: &[Arc<Routed>], model: Option<&str>) -> Vec<usize> {
    let active: Vec<usize> = (0..targets.len()).filter(|&i| targets[i].is_active()).collect();
    if active.len() <= 1 {
        return active;
    }
    let models: Vec<&Models> = active.iter().map(|&i| &targets[i].models).collect();
    match eligible(&models, model) {
        none if none.is_empty() => active,
        some => some.into_iter().map(|k| active[k]).collect(),
    }
}

/// The requests the active targets run at once, where every one of them says (llama-server's slots).
fn lanes(targets: &[Arc<Routed>]) -> Option<usize> {
    targets.iter().filter(|t| t.is_active()).map(|t| t.lanes).sum()
}

/// Whether a job's model changes where it may go: the active targets do not all take the same models.
fn models_differ(targets: &[Arc<Routed>]) -> bool {
    let mut active = targets.iter().filter(|t| t.is_active());
    let Some(first) = active.next() else { return false };
    active.any(|t| t.models != first.models)
}

/// What the claim loop waited for: a permit (`None`: the run is stopping), or a change of targets (`None`: no
/// more changes will come).
enum Woken {
    Permit(Option<(usize, Permit)>),
    Change(Option<TargetChange>),
}

/// The next job to send: one handed back by a server that went away, else the next from `source` (a claim of
/// about `want` jobs in a shared run). `None` once every job has been handed out and nothing in flight can come
/// back (or the run stops).
async fn next_job(
    source: &mut Source<'_>,
    want: usize,
    ctx: &Ctx,
    window: &mut Window,
    tasks: &mut JoinSet<()>,
) -> Result<Option<(Picked, bool)>, StoreError> {
    loop {
        if let Some(job) = ctx.returned.lock().expect("returned lock").pop_front() {
            return Ok(Some((Picked::alone(job), true)));
        }
        if let Some(picked) = window.pick() {
            return Ok(Some((picked, false)));
        }
        let claim = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return Ok(None),
            claim = source.next(want) => claim?,
        };
        let later = match claim {
            Claim::Jobs(next) => {
                window.extend(next);
                continue;
            }
            // Everything is handed out; jobs in flight may still come back from a server that goes away.
            Claim::Exhausted if tasks.is_empty() => return Ok(None),
            Claim::Exhausted => false,
            // Other workers hold the rest: claim again a little later (their leases may expire).
            Claim::Later => true,
        };
        tokio::select! {
            Some(_) = tasks.join_next() => {}
            _ = ctx.returned_ready.notified() => {}
            _ = tokio::time::sleep(CLAIM_AGAIN), if later => {}
            _ = ctx.stop.cancelled() => return Ok(None),
        }
    }
}

async fn claim_loop(
    mut source: Source<'_>,
    ctx: &Arc<Ctx>,
    tasks: &mut JoinSet<()>,
    mut targets: Vec<Arc<Routed>>,
    mut changes: Option<UnboundedReceiver<TargetChange>>,
) -> Result<(), StoreError> {
    // `--limit` sends the first jobs in file order.
    let mut window = Window::new(ctx.config.prefix_order && ctx.config.limit.is_none());
    let mut sent = 0u64;
    loop {
        // A shared run claims about as many jobs as its servers take at once: the rest stay free for others.
        let want = targets.iter().filter(|t| t.is_active()).map(|t| t.limiter.limit()).sum();
        // One llama-server: families are pinned to its slots (with several, a family's jobs may go to any).
        let one = targets.iter().filter(|t| t.is_active()).count() == 1;
        window.set_lanes(lanes(&targets), one);
        let Some((mut picked, again)) = next_job(&mut source, want, ctx, &mut window, tasks).await? else { break };
        if !again {
            if ctx.config.limit.is_some_and(|l| sent >= l) {
                return Ok(());
            }
            sent += 1;
        }
        match ctx.answer_from_cache(picked) {
            Some(p) => picked = p,
            None if ctx.stop.is_cancelled() => return Ok(()),
            None => continue,
        }
        let job = &picked.job;
        let mut model: Option<Option<String>> = None;
        let (target, permit) = loop {
            while let Some(change) = changes.as_mut().and_then(|rx| rx.try_recv().ok()) {
                ctx.apply(&mut targets, change);
            }
            // Reading the body's model costs a JSON parse: only where the servers differ in their models.
            if model.is_none() && models_differ(&targets) {
                model = Some(model_of(&job.body));
            }
            let eligible = route_for(&targets, model.as_ref().and_then(|m| m.as_deref()));
            if eligible.is_empty() {
                let set_aside = ctx.set_aside.lock().expect("set-aside lock").join("; ");
                if changes.is_none() || !set_aside.is_empty() {
                    // No server is usable: stop as a single server's run stops on its refusals.
                    let _ = ctx.outcomes.send(Outcome::NoServer(format!("no server is usable: {set_aside}")));
                    return Ok(());
                }
            }
            let woken = match changes.as_mut() {
                None => Woken::Permit(acquire_any(&targets, &eligible, sent as usize).await),
                Some(rx) if eligible.is_empty() => {
                    eprintln!("no server is left in the run: waiting for one to be added to the servers file");
                    tokio::select! {
                        change = rx.recv() => Woken::Change(change),
                        _ = ctx.stop.cancelled() => Woken::Permit(None),
                    }
                }
                Some(rx) => tokio::select! {
                    got = acquire_any(&targets, &eligible, sent as usize) => Woken::Permit(got),
                    change = rx.recv() => Woken::Change(change),
                },
            };
            match woken {
                // A target retired while the loop waited on it: its permit goes back, and the job looks again.
                Woken::Permit(Some((t, _))) if !targets[t].is_active() => continue,
                Woken::Permit(Some((t, permit))) => break (targets[t].clone(), permit),
                Woken::Permit(None) => return Ok(()),
                Woken::Change(Some(change)) => ctx.apply(&mut targets, change),
                Woken::Change(None) if targets.iter().any(|t| t.is_active()) => changes = None,
                Woken::Change(None) => return Ok(()),
            }
        };
        // The job was picked before the permit was free; the permit may be one a family's question just gave
        // back, for its next question (where every server takes the same models, any job fits the permit).
        if !again && model.is_none() {
            picked = match ctx.answer_from_cache(window.repick(picked)) {
                Some(p) => p,
                None => continue,
            };
        }
        let (job, in_flight) = picked.send();
        tasks.spawn(run_job(ctx.clone(), target, job, permit, in_flight));
        while tasks.try_join_next().is_some() {}
    }
    Ok(())
}

/// The `model` a request body names.
fn model_of(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["model"].as_str().map(str::to_owned)
}

/// Waits for `tasks` to finish; once `stop` is cancelled, for at most `timeout` more, then cancels the rest
/// (`hard`) and aborts them: their work stays pending for the next run. Every way of sending drains this way.
pub async fn drain(tasks: &mut JoinSet<()>, stop: &CancellationToken, hard: &CancellationToken, timeout: Duration) {
    let stopped = tokio::select! {
        _ = join_all(tasks) => false,
        _ = stop.cancelled() => true,
    };
    if stopped && tokio::time::timeout(timeout, join_all(tasks)).await.is_err() {
        tracing::warn!(
            "{} requests still in flight after the drain timeout: cancelled, they stay pending",
            tasks.len()
        );
        hard.cancel();
        tasks.abort_all();
        join_all(tasks).await;
    }
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

/// Sends one job to target `t` until it succeeds, fails for good, or the run stops (then it stays pending);
/// a job whose server goes away is handed back for another.
async fn run_job(ctx: Arc<Ctx>, target: Arc<Routed>, mut job: PendingJob, permit: Permit, in_flight: InFlight) {
    let key = AttemptKey::Job(job.seq);
    let lane = Lane { limiter: &target.limiter, samples: target.samples.as_ref() };
    // A job pinned to a llama-server slot says so in what is sent; its record and the cache keep its own body.
    let pinned =
        in_flight.slot().filter(|_| job.endpoint != Endpoint::Embedding).map(|s| order::with_slot(&job.body, s));
    let body = pinned.as_deref().unwrap_or(&job.body);
    let req = Request { key: &key, endpoint: job.endpoint, body, attempts: job.attempts };
    let tried = target.attempts.send(&lane, req, permit).await;
    // The request is over: its family is free before its permit goes back (with `tried`, at the end).
    drop(in_flight);
    // In a run of several servers, a server's refusals before it ever answered may be its own fault: the job
    // goes to another with its attempt handed back, and the server is set aside if it refuses everything.
    if let Tried::Failed { error, attempts, .. } = &tried {
        let judged = match ctx.reroute && !error.is_retryable() {
            true => target.trial.refused(&error.to_string()),
            false => Refusal::Record,
        };
        if judged != Refusal::Record {
            job.attempts = attempts - 1;
            target.attempts.refund(&key, job.attempts, error);
            target.counts.returned.fetch_add(1, Ordering::Relaxed);
            if let Refusal::SetAside(why) = judged {
                ctx.set_aside(&target, why);
            }
            ctx.hand_on(job);
            return;
        }
    }
    let work = Work { seq: job.seq, id: &job.id, line: job.line, step: None };
    let outcome = match tried {
        Tried::Answered { answer, attempts, sent_ms, .. } => {
            target.trial.answered();
            if let Some(cache) = &ctx.cache {
                cache.store(job.endpoint, &job.body, &answer);
            }
            target.counts.done.fetch_add(1, Ordering::Relaxed);
            Outcome::Done(Box::new(completion(job, answer, attempts, sent_ms)))
        }
        Tried::Stopped => return,
        Tried::Unreachable { attempts } => {
            target.counts.returned.fetch_add(1, Ordering::Relaxed);
            let outages = {
                let mut o = ctx.outages.lock().expect("outages lock");
                let n = o.entry(job.seq).or_insert(0);
                *n += 1;
                *n
            };
            if outages < OUTAGES_BEFORE_CRASHED {
                job.attempts = attempts;
                ctx.hand_on(job);
                return;
            }
            let message = format!(
                "in flight during {outages} outages of its server ({}): it may be what crashes it",
                target.attempts.backend.url()
            );
            target.counts.failed.fetch_add(1, Ordering::Relaxed);
            Outcome::Failed {
                failure: work.record(attempts, None, None, ErrorCode::ServerCrashed, message),
                permanent: false,
            }
        }
        failed => {
            let Some((failure, permanent)) = work.failure(&failed) else { return };
            target.counts.failed.fetch_add(1, Ordering::Relaxed);
            Outcome::Failed { failure, permanent }
        }
    };
    let _ = ctx.outcomes.send(outcome);
}

/// A job's completion by `answer`, sent at `sent_ms` after `attempts` attempts in all.
fn completion(job: PendingJob, answer: Answer, attempts: u32, sent_ms: i64) -> Completion {
    Completion {
        seq: job.seq,
        id: job.id,
        attempts,
        sent_ms,
        first_byte_ms: answer.first_byte.map(|d| sent_ms + d.as_millis() as i64),
        finished_ms: now_ms(),
        prompt_tokens: answer.prompt_tokens,
        completion_tokens: answer.completion_tokens,
        finish_reason: answer.finish_reason,
        status_code: answer.status_code,
        request_id: answer.request_id.unwrap_or_else(|| format!("inflight-{}", job.seq)),
        response: answer.body,
    }
}

/// What an attempt tells the controller, if anything. Outages and the request's own faults (permanent errors)
/// say nothing about how much the server can take, so they are left out.
pub(crate) fn sample_of(result: &Result<crate::backend::Answer, BackendError>, latency: Duration) -> Option<Sample> {
    let outcome = match result {
        Ok(_) => SampleOutcome::Ok,
        Err(e) if e.is_unreachable() || !e.is_retryable() => return None,
        Err(_) => SampleOutcome::Fault,
    };
    let tokens = match result {
        Ok(a) => a.completion_tokens.unwrap_or(0).max(0) as u64,
        Err(_) => 0,
    };
    Some(Sample { tokens, latency, outcome })
}
