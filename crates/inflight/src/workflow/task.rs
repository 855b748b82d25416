//! One step of one job: render, send through the run's one attempt path ([`Attempts`]), check the answer,
//! record. Like a plain job, its attempts are committed before each is sent and carried across sessions; an
//! answer that fails the step's JSON Schema is asked again with another seed, under the same permit, and counts
//! as an attempt.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::request::{output_of, render, Unit};
use super::shared::Shared;
use crate::backend::Answer;
use crate::code::ErrorCode;
use crate::dispatch::{self, Attempts, Judged, Request, Tried, Work};
use crate::job::Endpoint;
use crate::store::{now_ms, AttemptKey, Failure, StepDone, WriteMsg};
use crate::tune::{Limiter, Permit, Sample};

/// What a server's loop gives each of its tasks.
pub(super) struct TaskCtx {
    pub shared: Arc<Shared>,
    /// The attempt path to this loop's server.
    pub attempts: Attempts,
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
    Failed { failure: Box<Failure>, permanent: bool },
    Stopped,
}

/// Runs `unit` to a result, a failure, or the run's stop (then it stays pending).
pub(super) async fn run(ctx: Arc<TaskCtx>, lane: Lane, unit: Unit, permit: Permit) {
    let shared = &ctx.shared;
    let step = &shared.workflow.steps[unit.step];
    let key = AttemptKey::Step { seq: unit.seq, step: step.name.clone(), fingerprint: step.fingerprint.clone() };
    let work = Work { seq: unit.seq, id: &unit.id, line: unit.line, step: Some(&step.name) };
    let path = dispatch::Lane { limiter: &lane.limiter, samples: lane.samples.as_ref() };
    let api = ctx.attempts.backend.api();
    let (mut permit, mut attempts, mut invalid, mut first) = (permit, unit.attempts, 0u32, None);
    let end = loop {
        let body = match render(step, &unit, api, invalid) {
            Ok(b) => b,
            Err(e) => {
                let failure = work.record(attempts, None, None, ErrorCode::TemplateError, e.to_string());
                break End::Failed { failure, permanent: false };
            }
        };
        let req = Request { key: &key, endpoint: Endpoint::Chat, body: &body, attempts };
        let (answer, sent_ms) = match ctx.attempts.send(&path, req, permit).await {
            Tried::Answered { answer, attempts: spent, sent_ms, latency, permit: held } => {
                attempts = spent;
                permit = held;
                first.get_or_insert((latency, answer.load));
                (answer, sent_ms)
            }
            Tried::Stopped => break End::Stopped,
            failed => match work.failure(&failed) {
                Some((failure, permanent)) => break End::Failed { failure, permanent },
                None => break End::Stopped,
            },
        };
        match output_of(step, &answer.body) {
            Ok(output) => break End::Done(Box::new(done(&ctx, &unit, answer, output, attempts, invalid, sent_ms))),
            Err(reason) if attempts >= shared.max_attempts => {
                let failure = work.record(attempts, Some(sent_ms), None, ErrorCode::InvalidOutput, reason);
                break End::Failed { failure, permanent: false };
            }
            Err(reason) => {
                invalid += 1;
                shared.flow.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(id = %unit.id, step = %step.name, "answer refused, asking again: {reason}");
            }
        }
    };
    let msgs = match end {
        End::Stopped => return,
        End::Done(d) => {
            shared.stats.done.fetch_add(1, Ordering::Relaxed);
            shared.stats.completion_tokens.fetch_add(d.completion_tokens.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
            let held = shared.probation.answered(unit.step);
            held.into_iter().map(WriteMsg::Failed).chain([WriteMsg::Step(d)]).collect()
        }
        End::Failed { failure, permanent } => {
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            match shared.probation.failed(unit.step, Some(&step.name), failure, permanent) {
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
