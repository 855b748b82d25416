//! The servers a run sends to. Each target has its own permits (moved by its own controller), samples and
//! health; a job goes to whichever target that has its model frees a permit first, so a fast server takes
//! more jobs and a slow one fewer, with no fixed split. Targets can join a run and leave it while it goes
//! ([`TargetChange`], from `--servers-file`): a retired target takes no new work and finishes what it holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use super::attempt::Attempts;
use super::probation::PROBATION;
use crate::backend::Backend;
use crate::live::Health;
use crate::tune::{Limiter, Permit, Sample};

/// A job in flight during this many outages of its server fails as `server_crashed`: a job that crashes its
/// server must not take a fleet down one server at a time.
pub const OUTAGES_BEFORE_CRASHED: u32 = 3;

/// One server (or the engine) of a run.
pub struct Target {
    /// How requests reach it.
    pub backend: Arc<dyn Backend>,
    /// Its permits.
    pub limiter: Limiter,
    /// Whether it is reachable.
    pub health: Health,
    /// Its controller's samples (`None` for a fixed concurrency).
    pub samples: Option<UnboundedSender<Sample>>,
    /// Which jobs it takes.
    pub models: Models,
    /// What it did in this session.
    pub counts: Arc<TargetCounts>,
    /// The requests it says it runs at once (llama-server's slots), where it says so.
    pub lanes: Option<usize>,
}

/// A change to the servers of a run while it goes.
pub enum TargetChange {
    /// A server joins: jobs that it has the model of may go to it from now on.
    Add(Target),
    /// The server with this URL leaves: it takes no new jobs and finishes those it holds.
    Retire(String),
}

/// The models a target serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Models {
    /// The models it lists (`/v1/models`, `/api/tags`).
    pub listed: Vec<String>,
    /// It answers whatever model a request names (a llama-server with one model, the engine).
    pub any: bool,
}

impl Models {
    /// Whether it lists `model` (Ollama's `:latest` tag is implied).
    pub fn lists(&self, model: &str) -> bool {
        self.listed.iter().any(|m| crate::backend::names_model(m, model))
    }
}

/// What a target did in this session.
#[derive(Debug, Default)]
pub struct TargetCounts {
    /// Jobs it answered.
    pub done: AtomicU64,
    /// Jobs that failed on it for good.
    pub failed: AtomicU64,
    /// Jobs in flight on it when it went away, handed to the others.
    pub returned: AtomicU64,
}

impl TargetCounts {
    /// `(done, failed, returned)` now.
    pub fn get(&self) -> (u64, u64, u64) {
        (self.done.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), self.returned.load(Ordering::Relaxed))
    }
}

/// The targets that take a job naming `model`: those that list it, else those that answer any model name;
/// every target for a job that names none. Empty when no target has the model.
pub fn eligible(models: &[&Models], model: Option<&str>) -> Vec<usize> {
    let Some(model) = model else { return (0..models.len()).collect() };
    let listing: Vec<usize> = (0..models.len()).filter(|&i| models[i].lists(model)).collect();
    if !listing.is_empty() {
        return listing;
    }
    (0..models.len()).filter(|&i| models[i].any).collect()
}

/// A target as the dispatcher holds it.
pub(super) struct Routed {
    pub attempts: Attempts,
    pub limiter: Limiter,
    pub samples: Option<UnboundedSender<Sample>>,
    pub models: Models,
    pub counts: Arc<TargetCounts>,
    pub lanes: Option<usize>,
    /// Taken out of the run ([`TargetChange::Retire`], or set aside by its [`Trial`]): no new work.
    pub retired: AtomicBool,
    /// Until it answers once, whether its refusals are its own.
    pub trial: Trial,
}

impl Routed {
    /// Whether it still takes new work.
    pub fn is_active(&self) -> bool {
        !self.retired.load(Ordering::Relaxed)
    }
}

/// A server's trial in a run of several: until it has answered once, a refusal (a permanent error) may be the
/// server's fault (a wrong key, a broken model) rather than the job's, so the job goes to another server with
/// its attempt handed back; [`PROBATION`] identical refusals before any answer set the server aside, the rule a
/// single server's run stops on. A refusal that differs from the first is the job's own, and is recorded.
#[derive(Default)]
pub struct Trial {
    passed: AtomicBool,
    refusals: Mutex<Vec<String>>,
}

/// What a refusal means during a [`Trial`].
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The job's own: record it.
    Record,
    /// Perhaps the server's: hand the job to another server.
    HandOn,
    /// The server refused everything the same way: set it aside, with this message.
    SetAside(String),
}

impl Trial {
    /// The server answered a request: its refusals are the jobs' own from now on.
    pub fn answered(&self) {
        self.passed.store(true, Ordering::Relaxed);
    }

    /// Judges a refusal whose message is `message`.
    pub fn refused(&self, message: &str) -> Refusal {
        if self.passed.load(Ordering::Relaxed) {
            return Refusal::Record;
        }
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if refusals.first().is_some_and(|first| first != message) {
            return Refusal::Record;
        }
        refusals.push(message.to_owned());
        match refusals.len() {
            n if n < PROBATION => Refusal::HandOn,
            _ => Refusal::SetAside(format!("its first {PROBATION} requests were all refused the same way: {message}")),
        }
    }
}

/// A permit from whichever of `eligible` frees one first (an unreachable target frees none until it is
/// back), or `None` when the run is stopping. A free permit is taken at once, looking from `start` on (the
/// caller moves it, so ties do not always go to the first server); only when none is free does it wait on all.
pub(super) async fn acquire_any(targets: &[Arc<Routed>], eligible: &[usize], start: usize) -> Option<(usize, Permit)> {
    if let [only] = eligible {
        let t = &targets[*only];
        return t.attempts.acquire(&t.limiter).await.map(|p| (*only, p));
    }
    for k in 0..eligible.len() {
        let i = eligible[(start + k) % eligible.len()];
        if let Some(p) = targets[i].attempts.try_acquire(&targets[i].limiter) {
            return Some((i, p));
        }
    }
    let waits = eligible.iter().map(|&i| {
        let t = &targets[i];
        Box::pin(async move { t.attempts.acquire(&t.limiter).await.map(|p| (i, p)) })
    });
    let (first, _, _) = futures_util::future::select_all(waits).await;
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(listed: &[&str], any: bool) -> Models {
        Models { listed: listed.iter().map(|s| s.to_string()).collect(), any }
    }

    #[test]
    fn a_server_that_refuses_everything_the_same_way_before_any_answer_is_set_aside() {
        let t = Trial::default();
        for _ in 1..PROBATION {
            assert_eq!(t.refused("401: bad key"), Refusal::HandOn);
        }
        let Refusal::SetAside(why) = t.refused("401: bad key") else { panic!("the tenth sets it aside") };
        assert!(why.contains("first 10 requests") && why.contains("401: bad key"), "{why}");

        let t = Trial::default();
        assert_eq!(t.refused("too long: 900 tokens"), Refusal::HandOn);
        assert_eq!(t.refused("too long: 700 tokens"), Refusal::Record, "refusals that differ are the jobs' own");
        let t = Trial::default();
        t.answered();
        assert_eq!(t.refused("401: bad key"), Refusal::Record, "a server that answered is not on trial");
    }

    #[test]
    fn a_job_goes_to_servers_listing_its_model_else_to_those_answering_any() {
        let (a, b, any) = (m(&["A"], false), m(&["B:latest"], false), m(&["served"], true));
        let all = [&a, &b, &any];
        assert_eq!(eligible(&all, Some("A")), vec![0]);
        assert_eq!(eligible(&all, Some("B")), vec![1], "Ollama's :latest is implied");
        assert_eq!(eligible(&all, Some("served")), vec![2]);
        assert_eq!(eligible(&all, Some("gpt-4")), vec![2], "a one-model llama-server answers any name");
        assert_eq!(eligible(&all, None), vec![0, 1, 2]);
        assert!(eligible(&[&a, &b], Some("C")).is_empty(), "nobody has it");
    }
}
