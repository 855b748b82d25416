//! A model group: the steps one server runs with one model, with their own permits and controller.
//!
//! Concurrency learned for one model does not carry over to another, so each (server, model) has its own
//! [`Controller`]. Its clock runs only while the group's model is the one being fed: windows then measure the
//! model at work, not the time it waited for another model's batch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::backend::ServerKind;
use crate::tune::{spawn_controller, Clock, Controller, ControllerConfig, Limiter, Sample, TuneHandle};

/// A clock that advances only while its group is active.
#[derive(Default)]
pub(super) struct ActiveClock {
    state: Mutex<(Duration, Option<Instant>)>,
}

impl ActiveClock {
    /// Starts or stops the clock.
    pub fn set_active(&self, active: bool) {
        let mut st = self.state.lock().expect("clock lock");
        match (active, st.1) {
            (true, None) => st.1 = Some(Instant::now()),
            (false, Some(since)) => *st = (st.0 + since.elapsed(), None),
            _ => {}
        }
    }
}

impl Clock for ActiveClock {
    fn now(&self) -> Duration {
        let st = self.state.lock().expect("clock lock");
        st.0 + st.1.map(|s| s.elapsed()).unwrap_or_default()
    }
}

/// How concurrency is set for every group.
#[derive(Debug, Clone, Copy)]
pub enum GroupConcurrency {
    /// A fixed number of requests in flight per group.
    Fixed(usize),
    /// A controller per group, up to this many.
    Auto(usize),
}

/// One (server, model) group.
pub(super) struct Group {
    /// The model.
    pub model: String,
    /// Its steps, latest in the workflow first (finishing jobs first keeps results flowing).
    pub steps: Vec<usize>,
    /// Per step: where the next ready page starts.
    pub cursors: Vec<i64>,
    pub limiter: Limiter,
    pub samples: Option<UnboundedSender<Sample>>,
    pub clock: Arc<ActiveClock>,
    pub tune: Option<TuneHandle>,
    /// Whether the model has answered since it was last switched to (until then answers carry the load).
    pub warm: bool,
    /// Median-ish latency of warm answers (a running mean), to measure switches by.
    pub usual: Option<Duration>,
}

impl Group {
    /// A group for `model` running `steps`.
    pub fn new(model: String, steps: Vec<usize>, concurrency: GroupConcurrency, kind: ServerKind) -> Group {
        let clock = Arc::new(ActiveClock::default());
        let (limiter, samples, tune) = match concurrency {
            GroupConcurrency::Fixed(n) => (Limiter::new(n), None, None),
            GroupConcurrency::Auto(max) => {
                let limiter = Limiter::new(1);
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let cfg = ControllerConfig { max, ..Default::default() };
                let controller = Controller::new(cfg, clock.now());
                let dyn_clock: Arc<dyn Clock> = clock.clone();
                let handle = spawn_controller(controller, limiter.clone(), rx, dyn_clock, kind.parallel_fix());
                (limiter, Some(tx), Some(handle))
            }
        };
        let cursors = vec![0; steps.len()];
        Group { model, steps, cursors, limiter, samples, clock, tune, warm: false, usual: None }
    }

    /// Notes a warm answer's latency.
    pub fn answered(&mut self, latency: Duration) {
        self.usual = Some(match self.usual {
            Some(u) => u.mul_f64(0.9) + latency.mul_f64(0.1),
            None => latency,
        });
    }
}
