//! The servers a run sends to. Each target has its own permits (moved by its own controller), samples and
//! health; a job goes to whichever target that has its model frees a permit first, so a fast server takes
//! more jobs and a slow one fewer, with no fixed split.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::attempt::Attempts;
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
}

/// The models a target serves.
#[derive(Debug, Clone, Default)]
pub struct Models {
    /// The models it lists (`/v1/models`, `/api/tags`).
    pub listed: Vec<String>,
    /// It answers whatever model a request names (a llama-server with one model, the engine).
    pub any: bool,
}

impl Models {
    /// Whether it lists `model` (Ollama's `:latest` tag is implied).
    pub fn lists(&self, model: &str) -> bool {
        self.listed.iter().any(|m| m == model || m.strip_suffix(":latest") == Some(model))
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
}

/// A permit from whichever of `eligible` frees one first (an unreachable target frees none until it is
/// back), or `None` when the run is stopping. A free permit is taken at once, looking from `start` on (the
/// caller moves it, so ties do not always go to the first server); only when none is free does it wait on all.
pub(super) async fn acquire_any(targets: &[Routed], eligible: &[usize], start: usize) -> Option<(usize, Permit)> {
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
