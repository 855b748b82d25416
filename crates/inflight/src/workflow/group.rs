//! A model group: the steps one server runs with one model, with their own permits and controller.
//!
//! Each (server, model) has its own [`Controller`]: models differ in speed and in how they batch. It starts
//! when the model is first fed, at the level the server's other models have found if any, else at the lanes
//! the server says it has (lanes and threads are the server's, so either is a far better start than 1; the
//! controller still climbs above it and halves below it while that loses nothing). Its clock runs only while
//! the group's model is the one being fed: windows then measure the model at work, not the time it waited for
//! another model's batch.

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
    /// `--max-concurrency` and the server's kind, while a controller is still to be started.
    auto: Option<(usize, ServerKind)>,
    /// Whether the model has answered since it was last switched to (until then answers carry the load).
    pub warm: bool,
    /// Median-ish latency of warm answers (a running mean), to measure switches by.
    pub usual: Option<Duration>,
}

impl Group {
    /// A group for `model` running `steps`.
    pub fn new(model: String, steps: Vec<usize>, concurrency: GroupConcurrency, kind: ServerKind) -> Group {
        let (limiter, auto) = match concurrency {
            GroupConcurrency::Fixed(n) => (Limiter::new(n), None),
            GroupConcurrency::Auto(max) => (Limiter::new(1), Some((max, kind))),
        };
        let cursors = vec![0; steps.len()];
        let clock = Arc::new(ActiveClock::default());
        Group { model, steps, cursors, limiter, samples: None, clock, tune: None, auto, warm: false, usual: None }
    }

    /// Starts the controller (once, when the model is first fed), at `prior` if another model on the server
    /// found one, else at the server's lanes (or the engine's sequences) if it says, else from 1.
    pub fn start_tuning(&mut self, prior: Option<usize>) {
        let Some((max, kind)) = self.auto.take() else { return };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = ControllerConfig { max: kind.ceiling(max), ..Default::default() };
        let controller = match prior {
            Some(level) => Controller::starting_at(cfg, self.clock.now(), level),
            None => Controller::for_lanes(cfg, self.clock.now(), kind.start_level()),
        };
        let clock: Arc<dyn Clock> = self.clock.clone();
        self.tune = Some(spawn_controller(controller, self.limiter.clone(), rx, clock, kind.parallel_fix()));
        self.samples = Some(tx);
    }

    /// The level this group's controller holds or, still searching, its best so far.
    pub fn learned_level(&self) -> Option<usize> {
        let status = self.tune.as_ref()?.status.lock().ok()?;
        status.held.or(status.best)
    }

    /// Units per second it runs at, from its level and usual latency (Little's law), once it has answered.
    pub fn rate(&self) -> Option<f64> {
        let usual = self.usual?.as_secs_f64();
        (usual > 0.0).then(|| self.limiter.limit() as f64 / usual)
    }

    /// Notes a warm answer's latency.
    pub fn answered(&mut self, latency: Duration) {
        self.usual = Some(match self.usual {
            Some(u) => u.mul_f64(0.9) + latency.mul_f64(0.1),
            None => latency,
        });
    }
}
