//! The run loop: claim pending jobs page by page, send each under a permit from the [`Limiter`], retry
//! transient failures, and hand every outcome to the recorder. It never decides how many requests to send.
//!
//! Stopping: the `stop` token (Ctrl-C, SIGTERM, or the recorder's verdict) ends claiming; requests in flight get
//! `drain_timeout` to finish and be recorded; then the rest are cancelled and stay pending for the next run.

mod attempt;
mod probation;
mod recorder;
pub(crate) mod retry;

pub use attempt::{Attempts, Lane, Request, Tried, Work};
pub use probation::{Judged, Probation, PROBATION};
pub use recorder::{Outcome, Verdict};

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{Answer, Backend, BackendError};
use crate::cache::ResponseCache;
use crate::live::{Health, LiveStats};
use crate::store::{now_ms, AttemptKey, Completion, PendingJob, Store, StoreError, WriteMsg};
use crate::tune::{Limiter, Permit, Sample, SampleOutcome};

const PAGE: usize = 1024;

/// How the dispatcher behaves.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Attempts per job before it fails (transient errors only; permanent ones fail at once).
    pub max_attempts: u32,
    /// How long requests in flight may finish after a stop.
    pub drain_timeout: Duration,
    /// Send at most this many jobs in this session.
    pub limit: Option<u64>,
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
    attempts: Attempts,
    limiter: Limiter,
    outcomes: UnboundedSender<Outcome>,
    samples: Option<UnboundedSender<Sample>>,
    cache: Option<Arc<ResponseCache>>,
    config: DispatchConfig,
}

/// What the dispatcher works with.
pub struct Wiring {
    /// The server.
    pub backend: Arc<dyn Backend>,
    /// Permits: how many requests may be in flight.
    pub limiter: Limiter,
    /// Whether the server is reachable.
    pub health: Health,
    /// The store's writer.
    pub writer: Sender<WriteMsg>,
    /// Live counters.
    pub stats: Arc<LiveStats>,
    /// Where every finished attempt is reported for tuning (`None` for a fixed concurrency).
    pub samples: Option<UnboundedSender<Sample>>,
    /// Cancelled to stop the run (signals, the recorder's verdict).
    pub stop: CancellationToken,
    /// Answers to requests already answered in earlier runs (`None`: `--cache off`).
    pub cache: Option<Arc<ResponseCache>>,
}

/// Runs until every pending job is recorded, or until `stop`.
pub async fn dispatch(reader: &Store, wiring: Wiring, config: DispatchConfig) -> Result<Ending, StoreError> {
    let Wiring { backend, limiter, health, writer, stats, samples, stop, cache } = wiring;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hard = CancellationToken::new();
    let recorder = tokio::spawn(recorder::record(rx, writer.clone(), stats.clone(), [stop.clone(), hard.clone()]));
    let attempts =
        Attempts { backend, health, writer, stats, max_attempts: config.max_attempts, stop: stop.clone(), hard };
    let ctx = Arc::new(Ctx { attempts, limiter, outcomes: tx, samples, cache, config });
    let mut tasks = JoinSet::new();
    let claimed = claim_loop(reader, &ctx, &mut tasks).await;
    drain(&mut tasks, &ctx.attempts.stop, &ctx.attempts.hard, ctx.config.drain_timeout).await;
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

async fn claim_loop(reader: &Store, ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>) -> Result<(), StoreError> {
    let mut cursor = 0;
    let mut sent = 0u64;
    loop {
        let page = reader.pending_page(cursor, PAGE)?;
        if page.is_empty() {
            return Ok(());
        }
        for job in page {
            if ctx.config.limit.is_some_and(|l| sent >= l) {
                return Ok(());
            }
            cursor = job.seq;
            // A request answered before is answered again without a permit: it is not sent.
            if let Some(answer) = ctx.cache.as_ref().and_then(|c| c.lookup(job.endpoint, &job.body)) {
                if ctx.attempts.stop.is_cancelled() {
                    return Ok(());
                }
                sent += 1;
                let attempts = job.attempts;
                let _ = ctx.outcomes.send(Outcome::Done(Box::new(completion(job, answer, attempts, now_ms()))));
                continue;
            }
            let Some(permit) = ctx.attempts.acquire(&ctx.limiter).await else { return Ok(()) };
            sent += 1;
            tasks.spawn(run_job(ctx.clone(), job, permit));
            while tasks.try_join_next().is_some() {}
        }
    }
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

/// Sends one job until it succeeds, fails for good, or the run stops (then it stays pending).
async fn run_job(ctx: Arc<Ctx>, job: PendingJob, permit: Permit) {
    let key = AttemptKey::Job(job.seq);
    let lane = Lane { limiter: &ctx.limiter, samples: ctx.samples.as_ref() };
    let req = Request { key: &key, endpoint: job.endpoint, body: &job.body, attempts: job.attempts };
    let tried = ctx.attempts.send(&lane, req, permit).await;
    let outcome = match tried {
        Tried::Answered { answer, attempts, sent_ms, .. } => {
            if let Some(cache) = &ctx.cache {
                cache.store(job.endpoint, &job.body, &answer);
            }
            Outcome::Done(Box::new(completion(job, answer, attempts, sent_ms)))
        }
        Tried::Stopped => return,
        failed => {
            let work = Work { seq: job.seq, id: &job.id, line: job.line, step: None };
            let Some((failure, permanent)) = work.failure(&failed) else { return };
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
        Err(BackendError::Timeout(_)) => SampleOutcome::Backpressure,
        Err(e) if matches!(e.status(), Some(429 | 503)) => SampleOutcome::Backpressure,
        Err(_) => SampleOutcome::Error,
    };
    let tokens = match result {
        Ok(a) => a.completion_tokens.unwrap_or(0).max(0) as u64,
        Err(_) => 0,
    };
    Some(Sample { tokens, latency, outcome })
}
