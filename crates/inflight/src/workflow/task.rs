//! One step of one job: render, send, check the answer, retry, record. Like the plain run's job task, a
//! transient failure costs an attempt only while the server answers others, and the permit is given back
//! while a retry waits; an answer that fails the step's JSON Schema is asked again with another seed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::request::{output_of, render, Unit};
use super::shared::Shared;
use super::Judged;
use crate::backend::{Answer, Backend, BackendError};
use crate::dispatch::{retry, sample_of, Health};
use crate::job::Endpoint;
use crate::store::{now_ms, Failure, StepDone, WriteMsg};
use crate::tune::{Limiter, Permit, Sample};

/// What a server's loop gives each of its tasks.
pub(super) struct TaskCtx {
    pub shared: Arc<Shared>,
    pub backend: Arc<dyn Backend>,
    pub health: Health,
    pub events: UnboundedSender<Event>,
}

/// A finished task, reported to its server's loop once its result is on its way to the writer.
#[derive(Debug)]
pub(super) struct Event {
    /// The job.
    pub seq: i64,
    /// The step.
    pub step: usize,
    /// The model group it ran in.
    pub group: usize,
    /// Latency of its first answer and the load time the server reported with it, if it was answered.
    pub answer: Option<(Duration, Option<Duration>)>,
}

/// The group's side of a task: its permits and, when the controller should hear of it, its samples.
pub(super) struct Lane {
    pub group: usize,
    pub limiter: Limiter,
    pub samples: Option<UnboundedSender<Sample>>,
}

enum End {
    Done(Box<StepDone>),
    Failed { code: String, message: String, error: Option<BackendError> },
    Stopped,
}

/// Runs `unit` to a result, a failure, or the run's stop (then it stays pending).
pub(super) async fn run(ctx: Arc<TaskCtx>, lane: Lane, unit: Unit, permit: Permit) {
    let shared = &ctx.shared;
    let step = &shared.workflow.steps[unit.step];
    let api = ctx.backend.api();
    let mut permit = Some(permit);
    let (mut attempts, mut invalid) = (0u32, 0u32);
    let mut first = None;
    let mut sent_ms = now_ms();
    let end = loop {
        let body = match render(step, &unit, api, invalid) {
            Ok(b) => b,
            Err(e) => break End::Failed { code: "template_error".into(), message: e.to_string(), error: None },
        };
        sent_ms = now_ms();
        let epoch = ctx.health.epoch();
        let started = Instant::now();
        let result = tokio::select! {
            r = ctx.backend.send(Endpoint::Chat, &body) => r,
            _ = shared.hard.cancelled() => break End::Stopped,
        };
        let latency = started.elapsed();
        if let (Some(tx), Some(s)) = (&lane.samples, sample_of(&result, latency)) {
            let _ = tx.send(s);
        }
        let error = match result {
            Ok(answer) => {
                attempts += 1;
                first.get_or_insert((latency, load_of(&answer)));
                match output_of(step, &answer.body) {
                    Ok(output) => {
                        break End::Done(Box::new(done(&ctx, &unit, answer, output, attempts, invalid, sent_ms)))
                    }
                    Err(reason) if attempts >= shared.max_attempts => {
                        break End::Failed { code: "invalid_output".into(), message: reason, error: None }
                    }
                    Err(reason) => {
                        invalid += 1;
                        shared.flow.invalid.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(id = %unit.id, step = %step.name, "answer refused, asking again: {reason}");
                        continue;
                    }
                }
            }
            Err(e) => e,
        };
        drop(permit.take());
        let counts = !error.is_unreachable() || ctx.health.unreachable(epoch).await;
        if counts {
            attempts += 1;
        }
        if !error.is_retryable() || attempts >= shared.max_attempts {
            let message = if error.is_retryable() {
                format!("gave up after {attempts} attempts: {error}")
            } else {
                error.to_string()
            };
            break End::Failed { code: error.kind().into(), message, error: Some(error) };
        }
        if counts {
            shared.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(retry::backoff(attempts, error.retry_after())) => {}
                _ = shared.stop.cancelled() => break End::Stopped,
            }
        }
        match acquire(&ctx, &lane.limiter).await {
            Some(p) => permit = Some(p),
            None => break End::Stopped,
        }
    };
    drop(permit);
    let msgs = match end {
        End::Stopped => return,
        End::Done(d) => {
            shared.stats.done.fetch_add(1, Ordering::Relaxed);
            shared.stats.completion_tokens.fetch_add(d.completion_tokens.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
            let held = shared.probation.answered(unit.step);
            held.into_iter().map(WriteMsg::Failed).chain([WriteMsg::Step(d)]).collect()
        }
        End::Failed { code, message, error } => {
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            let permanent = error.as_ref().is_some_and(|e| !e.is_retryable());
            let failure = Box::new(Failure {
                seq: unit.seq,
                id: unit.id.clone(),
                line: unit.line,
                attempts,
                sent_ms: Some(sent_ms),
                finished_ms: now_ms(),
                status_code: error.as_ref().and_then(BackendError::status),
                response: error.as_ref().and_then(|e| e.body().map(str::to_owned)),
                code,
                message,
                step: Some(step.name.clone()),
            });
            match shared.probation.failed(unit.step, &step.name, failure, permanent) {
                Judged::Record(f) => vec![WriteMsg::Failed(f)],
                Judged::Held => Vec::new(),
                Judged::Stop(why) => {
                    // At once, like the plain run: the requests in flight are cancelled and stay pending.
                    shared.verdict.lock().expect("verdict lock").get_or_insert(why);
                    shared.stop.cancel();
                    shared.hard.cancel();
                    Vec::new()
                }
            }
        }
    };
    // The writer first, then the loop: the loop flushes the writer before it trusts the store again.
    if msgs.into_iter().any(|m| shared.writer.send(m).is_err()) {
        shared.stop.cancel();
    }
    let _ = ctx.events.send(Event { seq: unit.seq, step: unit.step, group: lane.group, answer: first });
}

fn done(
    ctx: &TaskCtx,
    unit: &Unit,
    answer: Answer,
    output: Value,
    attempts: u32,
    invalid: u32,
    sent_ms: i64,
) -> StepDone {
    let steps = &ctx.shared.workflow.steps;
    StepDone {
        seq: unit.seq,
        step: steps[unit.step].name.clone(),
        ord: unit.step,
        fingerprint: steps[unit.step].fingerprint.clone(),
        output: output.to_string(),
        response: answer.body,
        attempts,
        invalid,
        prompt_tokens: answer.prompt_tokens,
        completion_tokens: answer.completion_tokens,
        sent_ms,
        finished_ms: now_ms(),
        steps_total: steps.len(),
    }
}

/// The load time Ollama reports with an answer (`load_duration`, nanoseconds), kept under `x_ollama`.
fn load_of(answer: &Answer) -> Option<Duration> {
    let body: Value = serde_json::from_str(&answer.body).ok()?;
    body["x_ollama"]["load_duration"].as_u64().map(Duration::from_nanos)
}

/// A permit once the server is reachable, or `None` when the run is stopping.
async fn acquire(ctx: &TaskCtx, limiter: &Limiter) -> Option<Permit> {
    loop {
        if !ctx.health.wait_open().await {
            return None;
        }
        let permit = tokio::select! {
            p = limiter.acquire() => p,
            _ = ctx.shared.stop.cancelled() => return None,
        };
        if !ctx.health.is_paused() {
            return Some(permit);
        }
    }
}
