//! The controller's task: the one owner of the [`Controller`]. It receives a [`Sample`] for every finished
//! attempt and, where the server counts its busy lanes, the readings of a [`BusySampler`]; ticks on a clock it
//! is given, applies decisions to the [`Limiter`], logs each with its reason, and publishes its state for the
//! progress display and the summary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{Receiver, UnboundedReceiver};
use tokio::task::JoinHandle;

use super::{Controller, FaultCounts, Limiter, Phase, Sample};
use crate::backend::BusySampler;

/// Where the controller reads time from (tests give it synthetic time through the core's arguments).
pub trait Clock: Send + Sync {
    /// Time since some fixed start.
    fn now(&self) -> Duration;
}

/// Monotonic wall time.
pub struct SystemClock(Instant);

impl SystemClock {
    /// A clock starting now.
    pub fn new() -> SystemClock {
        SystemClock(Instant::now())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// What the controller is doing, shared with the display.
#[derive(Debug, Clone, Default)]
pub struct TuneStatus {
    /// What the controller is doing (`climbing`, `refining`, `holding`, `probing`).
    pub phase: Phase,
    /// The level held once known.
    pub held: Option<usize>,
    /// The smallest level within the noise of the best measured so far, once anything is measured.
    pub best: Option<usize>,
    /// The effective number of lanes the server showed, once known.
    pub lanes: Option<usize>,
    /// Messages for the user (e.g. that the server runs one request at a time).
    pub notes: Vec<String>,
    /// Highest level tried.
    pub max_tried: usize,
    /// Level changes so far.
    pub changes: u64,
    /// The most requests the server reported processing at once, where it reports a count.
    pub busy_max: Option<usize>,
    /// The failed attempts it measured, backpressure apart from a steady share.
    pub faults: FaultCounts,
}

/// A running controller task.
pub struct TuneHandle {
    /// Its state, for display.
    pub status: Arc<Mutex<TuneStatus>>,
    task: JoinHandle<()>,
}

impl TuneHandle {
    /// Waits for the task to end (it ends when every sample sender is gone) and returns the final state.
    pub async fn finish(self) -> TuneStatus {
        let _ = self.task.await;
        let status = self.status.lock().expect("tune status lock");
        status.clone()
    }
}

/// Starts the controller task: `samples` feed it, `limiter` obeys it.
pub fn spawn_controller(
    controller: Controller,
    limiter: Limiter,
    samples: UnboundedReceiver<Sample>,
    clock: Arc<dyn Clock>,
    fix: String,
) -> TuneHandle {
    spawn_controller_with(controller, limiter, samples, None, clock, fix)
}

/// [`spawn_controller`], with the server's busy count sampled by `busy` (where it reports one) fed to
/// [`Controller::on_busy`]; the sampler stops with the controller.
pub fn spawn_controller_with(
    mut controller: Controller,
    limiter: Limiter,
    mut samples: UnboundedReceiver<Sample>,
    busy: Option<BusySampler>,
    clock: Arc<dyn Clock>,
    fix: String,
) -> TuneHandle {
    let (mut readings, sampler) = match busy.map(BusySampler::spawn) {
        Some((rx, task)) => (Some(rx), Some(task)),
        None => (None, None),
    };
    let status = Arc::new(Mutex::new(TuneStatus { phase: controller.phase(), ..Default::default() }));
    let shared = status.clone();
    limiter.set_limit(controller.level());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut max_tried = controller.level();
        let mut changes = 0;
        // Requests held past the controller's stall age: they hold permits but do no work.
        let mut stalled = 0;
        loop {
            let decision = tokio::select! {
                s = samples.recv() => match s {
                    Some(s) => controller.on_sample(clock.now(), s),
                    None => break,
                },
                _ = tick.tick() => {
                    stalled = controller.stall_after().map_or(0, |age| limiter.held_longer_than(age));
                    limiter.set_limit(controller.permits(stalled));
                    controller.tick(clock.now(), limiter.in_flight().saturating_sub(stalled))
                }
                n = next_reading(&mut readings) => {
                    match n {
                        Some(n) => controller.on_busy(clock.now(), n),
                        // The server reports no count (or stopped answering): the controller goes on without.
                        None => readings = None,
                    }
                    None
                }
            };
            if let Some(d) = decision {
                tracing::info!("concurrency {} → {}: {}", d.from, d.to, d.reason);
                limiter.set_limit(controller.permits(stalled));
                max_tried = max_tried.max(d.to);
                changes += 1;
            }
            let notes = controller.take_notes();
            for note in &notes {
                tracing::warn!("{note}. {fix}");
            }
            let mut st = shared.lock().expect("tune status lock");
            st.phase = controller.phase();
            st.held = controller.held_level();
            st.best = controller.best_level();
            st.lanes = controller.effective_lanes();
            st.max_tried = max_tried;
            st.changes = changes;
            st.busy_max = controller.server_busy_max();
            st.faults = controller.faults();
            st.notes.extend(notes.into_iter().map(|n| format!("{n}. {fix}")));
        }
        if let Some(task) = sampler {
            task.abort();
        }
    });
    TuneHandle { status, task }
}

/// The next busy reading, or never when there is no sampler (so `select!` waits on the other inputs).
async fn next_reading(readings: &mut Option<Receiver<usize>>) -> Option<usize> {
    match readings {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
