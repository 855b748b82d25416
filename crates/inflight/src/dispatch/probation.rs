//! Probation: until a piece of work has had an answer, the server's identical refusals of it are held back
//! rather than recorded, and the first [`PROBATION`] of them stop the run with the server's message. A wrong
//! model name or a bad key must not turn a million jobs into error lines.
//!
//! One rule for both modes: a plain run is on probation as a whole (one "step"), a workflow step by step (a
//! wrong model name in step 2 stops the run naming step 2). A held piece of work is not sent again while it is
//! held; held failures are recorded once their step gets an answer (the refusals were those jobs' own), or when
//! nothing else of the step is left to run. A failure that differs from the held ones, or one that is not a
//! refusal (out of retries), is recorded at once.

use std::sync::Mutex;

use crate::store::Failure;

/// How many identical refusals, before any answer, stop the run.
pub const PROBATION: usize = 10;

/// What to do with a failure.
pub enum Judged {
    /// Record it.
    Record(Box<Failure>),
    /// Held back; nothing to record now.
    Held,
    /// The first refusals were all the same: stop the run with this message.
    Stop(String),
}

#[derive(Default)]
struct Trial {
    /// The step has had an answer: its failures are recorded as they come.
    passed: bool,
    held: Vec<Failure>,
}

/// Every step's probation.
pub struct Probation {
    steps: Mutex<Vec<Trial>>,
}

impl Probation {
    /// Probation for `steps` steps, none passed yet.
    pub fn new(steps: usize) -> Probation {
        Probation { steps: Mutex::new((0..steps).map(|_| Trial::default()).collect()) }
    }

    /// Step `step` had an answer: returns the failures it held, to record.
    pub fn answered(&self, step: usize) -> Vec<Box<Failure>> {
        let mut steps = self.steps.lock().expect("probation lock");
        steps[step].passed = true;
        steps[step].held.drain(..).map(Box::new).collect()
    }

    /// Judges a failure of step `step` (named `name`, `None` for a plain run); `permanent` when the server
    /// refused the request.
    pub fn failed(&self, step: usize, name: Option<&str>, failure: Box<Failure>, permanent: bool) -> Judged {
        let mut steps = self.steps.lock().expect("probation lock");
        let trial = &mut steps[step];
        let same = trial.held.first().is_none_or(|f| f.code == failure.code && f.message == failure.message);
        if trial.passed || !permanent || !same {
            return Judged::Record(failure);
        }
        trial.held.push(*failure);
        if trial.held.len() < PROBATION {
            return Judged::Held;
        }
        let f = &trial.held[0];
        let which = name.map(|n| format!("step {n}: ")).unwrap_or_default();
        Judged::Stop(format!(
            "{which}the first {PROBATION} requests all failed the same way ({}): {}",
            f.code, f.message
        ))
    }

    /// Whether job `seq`'s step `step` is held back (it must not be sent again).
    pub fn is_held(&self, step: usize, seq: i64) -> bool {
        let steps = self.steps.lock().expect("probation lock");
        steps[step].held.iter().any(|f| f.seq == seq)
    }

    /// Gives up holding `steps`' failures (nothing else of them is left to run): returns them, to record.
    pub fn release(&self, steps: &[usize]) -> Vec<Box<Failure>> {
        let mut all = self.steps.lock().expect("probation lock");
        steps.iter().flat_map(|&s| std::mem::take(&mut all[s].held)).map(Box::new).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(seq: i64, message: &str) -> Box<Failure> {
        Box::new(Failure {
            seq,
            id: format!("j{seq}"),
            line: seq,
            attempts: 1,
            sent_ms: None,
            finished_ms: 0,
            status_code: Some(404),
            response: None,
            code: crate::code::ErrorCode::NotFound,
            message: message.into(),
            step: Some("critique".into()),
        })
    }

    #[test]
    fn ten_identical_refusals_before_an_answer_stop_the_run_naming_the_step() {
        let p = Probation::new(2);
        for seq in 0..PROBATION as i64 - 1 {
            assert!(matches!(p.failed(1, Some("critique"), failure(seq, "model 'x' not found"), true), Judged::Held));
            assert!(p.is_held(1, seq));
        }
        let Judged::Stop(why) = p.failed(1, Some("critique"), failure(99, "model 'x' not found"), true) else {
            panic!("the tenth stops the run")
        };
        assert!(why.starts_with("step critique: the first 10 requests") && why.contains("model 'x' not found"));
        assert!(!p.is_held(0, 0), "other steps are apart");
    }

    #[test]
    fn an_answer_or_a_different_failure_ends_probation_and_held_failures_are_recorded() {
        let p = Probation::new(1);
        assert!(matches!(p.failed(0, Some("a"), failure(1, "bad"), true), Judged::Held));
        assert!(matches!(p.failed(0, Some("a"), failure(2, "other"), true), Judged::Record(_)));
        assert!(matches!(p.failed(0, Some("a"), failure(3, "bad"), false), Judged::Record(_)), "out of retries");
        assert_eq!(p.answered(0).len(), 1);
        assert!(matches!(p.failed(0, Some("a"), failure(4, "bad"), true), Judged::Record(_)));
        assert!(matches!(p.failed(0, Some("a"), failure(5, "bad"), true), Judged::Record(_)));
        assert!(p.release(&[0]).is_empty());
    }
}
