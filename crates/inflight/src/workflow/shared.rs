//! What the scheduling loops share and publish: the workflow, the writer, the stop tokens, and each
//! server's view (loaded model, step mix, switches) for the display and the summary.

use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Workflow;
use crate::backend::{Backend, ServerKind};
use crate::dispatch::Probation;
use crate::live::Health;
use crate::live::LiveStats;
use crate::store::WriteMsg;

/// What every server's loop shares.
pub struct Shared {
    /// The workflow.
    pub workflow: Arc<Workflow>,
    /// The store's writer.
    pub writer: Sender<WriteMsg>,
    /// Live counters (steps done, jobs failed, tokens, retries).
    pub stats: Arc<LiveStats>,
    /// Workflow counters and each server's view, for the display and the summary.
    pub flow: Arc<FlowStats>,
    /// Soft stop: no new sends.
    pub stop: CancellationToken,
    /// Hard stop: cancel requests in flight.
    pub hard: CancellationToken,
    /// Attempts per step.
    pub max_attempts: u32,
    /// Bumped whenever a loop has seen results committed, so the other loops look for newly ready work.
    pub progress: watch::Sender<u64>,
    /// Each step's probation (its first refusals held back).
    pub probation: Probation,
    /// The units (job, step) some loop has read to send and whose result is not committed yet: a step that runs
    /// on several servers is read by each one's loop from the same ready work, and a unit goes to the loop that
    /// takes it here first.
    pub taken: Mutex<std::collections::HashSet<(i64, usize)>>,
    /// Why the run was stopped, when probation stopped it.
    pub verdict: Mutex<Option<String>>,
}

/// Workflow counters.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Answers refused by a step's schema (each asked again with another seed).
    pub invalid: AtomicU64,
    /// One view per server, in the order of the plans.
    pub servers: Vec<Mutex<ServerView>>,
}

impl ServerView {
    /// One line for the progress display: the model being fed, the steps in flight, switches so far.
    pub fn line(&self) -> String {
        let mix: Vec<String> = self.in_flight.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let tuning: Vec<String> = self.tuning.iter().map(|(m, l, p)| format!("{m} {l} {p}")).collect();
        format!(
            "model {} [{}] | {} switches ({:.1}s) | concurrency {}",
            self.model.as_deref().unwrap_or("-"),
            mix.join(", "),
            self.switches,
            self.switching.as_secs_f64(),
            tuning.join(", ")
        )
    }
}

/// What one server is doing, published by its loop.
#[derive(Debug, Clone, Default)]
pub struct ServerView {
    /// The server's URL.
    pub url: String,
    /// The model being fed now.
    pub model: Option<String>,
    /// Model switches so far, the first load included.
    pub switches: u64,
    /// Time spent switching, as measured.
    pub switching: Duration,
    /// Steps in flight now, by step name.
    pub in_flight: Vec<(String, usize)>,
    /// Each model's controller: (model, held level or limit, phase).
    pub tuning: Vec<(String, usize, &'static str)>,
}

/// One server and the steps it runs.
#[derive(Clone)]
pub struct ServerPlan {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// What the server is, for the controller's advice.
    pub kind: ServerKind,
    /// Whether it is reachable (pauses the run's sends while it is not).
    pub health: Health,
    /// Indices of the steps it runs.
    pub steps: Vec<usize>,
    /// The models it had loaded when the run began, where it says (its first model is one of them if it can).
    pub loaded: Vec<String>,
}
