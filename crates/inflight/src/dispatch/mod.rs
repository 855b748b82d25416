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
pub use targets::{eligible, Models, Target, TargetCounts, OUTAGES_BEFORE_CRASHED};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{Answer, BackendError};
use crate::cache::ResponseCache;
use crate::code::ErrorCode;
use crate::live::LiveStats;
use crate::store::{now_ms, AttemptKey, Completion, PendingJob, Store, StoreError, WriteMsg};
use crate::tune::{Permit, Sample, SampleOutcome};
use targets::{acquire_any, Routed};

const PAGE: usize = 1024;

/// How the dispatcher behaves.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Attempts per job before it fails (transient errors only; permanent ones fail at once).
    pub max_attempts: u32,
    /// How long requests in flight may finish after a stop.
    pub drain_timeout: Duration,
    /// Send at most this many jobs in this session (the first ones in file order: no reordering then).
    pub limit: Option<u64>,
    /// Send the jobs of each page with a shared prompt prefix together ([`order::by_prefix`]).
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
    targets: Vec<Routed>,
    outcomes: UnboundedSender<Outcome>,
    cache: Option<Arc<ResponseCache>>,
    config: DispatchConfig,
    stop: CancellationToken,
    hard: CancellationToken,
    /// Jobs handed back by a target that went away, sent again before new ones.
    returned: Mutex<VecDeque<PendingJob>>,
    returned_ready: Notify,
    /// Per job: the outages of its server it was in flight for.
    outages: Mutex<HashMap<i64, u32>>,
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
}

/// Runs until every pending job is recorded, or until `stop`.
pub async fn dispatch(reader: &Store, wiring: Wiring, config: DispatchConfig) -> Result<Ending, StoreError> {
    let Wiring { targets, writer, stats, stop, cache } = wiring;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hard = CancellationToken::new();
    let recorder = tokio::spawn(recorder::record(rx, writer.clone(), stats.clone(), [stop.clone(), hard.clone()]));
    // With other servers to take it, work in flight on a server that goes away is handed back at once.
    let reroute = targets.len() > 1;
    let targets = targets
        .into_iter()
        .map(|t| Routed {
            attempts: Attempts {
                backend: t.backend,
                health: t.health,
                writer: writer.clone(),
                stats: stats.clone(),
                max_attempts: config.max_attempts,
                stop: stop.clone(),
                hard: hard.clone(),
                reroute,
            },
            limiter: t.limiter,
            samples: t.samples,
            models: t.models,
            counts: t.counts,
        })
        .collect();
    let ctx = Arc::new(Ctx {
        targets,
        outcomes: tx,
        cache,
        config,
        stop: stop.clone(),
        hard,
        returned: Mutex::new(VecDeque::new()),
        returned_ready: Notify::new(),
        outages: Mutex::new(HashMap::new()),
    });
    let mut tasks = JoinSet::new();
    let claimed = claim_loop(reader, &ctx, &mut tasks).await;
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

/// The next job to send: one handed back by a server that went away, else the next pending one in store
/// order. `None` once every job has been handed out and nothing in flight can come back (or the run stops).
async fn next_job(
    reader: &Store,
    ctx: &Ctx,
    page: &mut VecDeque<PendingJob>,
    cursor: &mut i64,
    tasks: &mut JoinSet<()>,
) -> Result<Option<(PendingJob, bool)>, StoreError> {
    loop {
        if let Some(job) = ctx.returned.lock().expect("returned lock").pop_front() {
            return Ok(Some((job, true)));
        }
        if let Some(job) = page.pop_front() {
            return Ok(Some((job, false)));
        }
        let mut next = reader.pending_page(*cursor, PAGE)?;
        if let Some(last) = next.last() {
            *cursor = last.seq;
            if ctx.config.prefix_order && ctx.config.limit.is_none() {
                order::by_prefix(&mut next);
            }
            page.extend(next);
            continue;
        }
        // Everything is handed out; jobs in flight may still come back from a server that goes away.
        if tasks.is_empty() || ctx.stop.is_cancelled() {
            return Ok(None);
        }
        tokio::select! {
            _ = tasks.join_next() => {}
            _ = ctx.returned_ready.notified() => {}
            _ = ctx.stop.cancelled() => return Ok(None),
        }
    }
}

async fn claim_loop(reader: &Store, ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>) -> Result<(), StoreError> {
    let (mut page, mut cursor, mut sent) = (VecDeque::new(), 0, 0u64);
    let models: Vec<&Models> = ctx.targets.iter().map(|t| &t.models).collect();
    let all: Vec<usize> = (0..ctx.targets.len()).collect();
    while let Some((job, again)) = next_job(reader, ctx, &mut page, &mut cursor, tasks).await? {
        if !again {
            if ctx.config.limit.is_some_and(|l| sent >= l) {
                return Ok(());
            }
            sent += 1;
        }
        // A request answered before is answered again without a permit: it is not sent.
        if let Some(answer) = ctx.cache.as_ref().and_then(|c| c.lookup(job.endpoint, &job.body)) {
            if ctx.stop.is_cancelled() {
                return Ok(());
            }
            let attempts = job.attempts;
            let _ = ctx.outcomes.send(Outcome::Done(Box::new(completion(job, answer, attempts, now_ms()))));
            continue;
        }
        let eligible =
            if ctx.targets.len() == 1 { all.clone() } else { eligible(&models, model_of(&job.body).as_deref()) };
        // Every pending job's model was checked against the servers before the run; a job none of them matches
        // anyway may go to any server (which answers it or refuses it as for one server).
        let eligible = if eligible.is_empty() { all.clone() } else { eligible };
        let Some((t, permit)) = acquire_any(&ctx.targets, &eligible, sent as usize).await else { return Ok(()) };
        tasks.spawn(run_job(ctx.clone(), t, job, permit));
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
async fn run_job(ctx: Arc<Ctx>, t: usize, mut job: PendingJob, permit: Permit) {
    let target = &ctx.targets[t];
    let key = AttemptKey::Job(job.seq);
    let lane = Lane { limiter: &target.limiter, samples: target.samples.as_ref() };
    let req = Request { key: &key, endpoint: job.endpoint, body: &job.body, attempts: job.attempts };
    let tried = target.attempts.send(&lane, req, permit).await;
    let work = Work { seq: job.seq, id: &job.id, line: job.line, step: None };
    let outcome = match tried {
        Tried::Answered { answer, attempts, sent_ms, .. } => {
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
                ctx.returned.lock().expect("returned lock").push_back(job);
                ctx.returned_ready.notify_one();
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
