//! The servers of a one-step run: a connection per `--server` (or the engine), each with its own limiter and,
//! for `--concurrency auto`, its own controller (its lanes, threads and speed are its own); the check that
//! every job's model is on one of them; their progress line and summary.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::common::setup_error;
use super::parse::Concurrency;
use super::run_args::RunArgs;
use crate::backend::{Api, BusySampler, Connection, ServerKind};
use crate::dispatch::{eligible, Models, Target, TargetCounts};
use crate::live::Health;
use crate::report::{ConcurrencyMode, ConcurrencyReport, ServerGauge, ServerShare};
use crate::tune::{
    spawn_controller_with, Clock, Controller, ControllerConfig, Limiter, Sample, SystemClock, TuneHandle, TuneStatus,
};

/// One server of the run, with what drives its concurrency.
pub struct RunTarget {
    /// The connection.
    pub conn: Connection,
    /// Its permits.
    pub limiter: Limiter,
    samples: Option<UnboundedSender<Sample>>,
    tune: Option<TuneHandle>,
    health: Health,
    counts: Arc<TargetCounts>,
}

impl RunTarget {
    /// A target for `conn`, its controller started for `--concurrency auto`.
    pub fn new(args: &RunArgs, conn: Connection, stop: &CancellationToken) -> RunTarget {
        let (limiter, samples, tune) = concurrency(args, &conn);
        let health = Health::new(conn.backend.clone(), stop.clone());
        RunTarget { conn, limiter, samples, tune, health, counts: Arc::new(TargetCounts::default()) }
    }

    /// The controller's live status, if auto.
    pub fn tune_status(&self) -> Option<Arc<std::sync::Mutex<TuneStatus>>> {
        self.tune.as_ref().map(|t| t.status.clone())
    }

    /// What the dispatcher takes.
    pub fn target(&self) -> Target {
        Target {
            backend: self.conn.backend.clone(),
            limiter: self.limiter.clone(),
            health: self.health.clone(),
            samples: self.samples.clone(),
            models: models_of(&self.conn),
            counts: self.counts.clone(),
            lanes: self.conn.info.kind.lanes(),
        }
    }

    /// What the metrics read while the run goes.
    pub fn gauge(&self) -> ServerGauge {
        ServerGauge { server: self.conn.backend.url().to_owned(), limiter: self.limiter.clone() }
    }

    /// What the progress display reads while the run goes.
    pub fn view(&self) -> TargetView {
        TargetView {
            url: self.conn.backend.url().to_owned(),
            limiter: self.limiter.clone(),
            health: self.health.clone(),
            counts: self.counts.clone(),
        }
    }

    /// Stops its controller; its concurrency and its share of the run, for the summary.
    pub async fn finish(mut self) -> (ConcurrencyReport, ServerShare) {
        // The controller ends when its last sample sender is gone (the dispatcher's went with it).
        drop(self.samples.take());
        let tuned = match self.tune {
            Some(t) => Some(t.finish().await),
            None => None,
        };
        let report = concurrency_report(tuned, self.limiter.limit(), self.conn.info.kind.lanes());
        let (done, failed, returned) = self.counts.get();
        let share = ServerShare {
            url: self.conn.backend.url().to_owned(),
            done,
            failed,
            returned,
            outages: self.health.outages(),
            held: report.held,
            server_slots: report.server_slots,
        };
        (report, share)
    }
}

/// The servers of a run, shared by the run and the servers-file watcher (servers join while it goes).
#[derive(Clone)]
pub struct Fleet(Arc<Mutex<Vec<RunTarget>>>);

impl Fleet {
    /// A fleet of these servers.
    pub fn new(targets: Vec<RunTarget>) -> Fleet {
        Fleet(Arc::new(Mutex::new(targets)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RunTarget>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A server that joins while the run goes: a new target (its own limiter and controller), or the one it
    /// had if it was in the run before. What the dispatcher takes of it.
    pub fn join(&self, conn: Connection, args: &RunArgs, stop: &CancellationToken) -> Target {
        let mut targets = self.lock();
        if let Some(known) = targets.iter().find(|t| t.conn.backend.url() == conn.backend.url()) {
            return known.target();
        }
        let target = RunTarget::new(args, conn, stop);
        let taken = target.target();
        targets.push(target);
        taken
    }

    /// How many servers it has had.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// What the dispatcher takes of each server.
    pub fn targets(&self) -> Vec<Target> {
        self.lock().iter().map(RunTarget::target).collect()
    }

    /// What the first server's packing layer did (`None` when it packed nothing), for the summary.
    pub fn packing(&self) -> Option<crate::backend::PackReport> {
        self.lock()[0].conn.backend.packing().filter(|p| p.requests > 0)
    }

    /// Each server's limiter, for the metrics.
    pub fn gauges(&self) -> Vec<ServerGauge> {
        self.lock().iter().map(RunTarget::gauge).collect()
    }

    /// The first server's limiter, health and controller status (what a one-server progress line shows).
    pub fn first(&self) -> (Limiter, Health, Option<Arc<Mutex<TuneStatus>>>) {
        let targets = self.lock();
        (targets[0].limiter.clone(), targets[0].health.clone(), targets[0].tune_status())
    }

    /// Each server's requests in flight, limit and answers, for the progress line.
    pub fn progress_line(&self) -> String {
        self.lock().iter().map(|t| t.view().line()).collect::<Vec<_>>().join(" || ")
    }

    /// Each server's state now (`elapsed` into the session), as `status --json` shows it: its URL, requests in
    /// flight and limit, the level its controller holds (`null` while it searches or for a fixed level), its
    /// lanes where the server says, answers, failures, jobs handed on, outages, whether it is paused, and its
    /// rate over the session.
    pub fn live(&self, elapsed: std::time::Duration) -> serde_json::Value {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let servers: Vec<serde_json::Value> = self
            .lock()
            .iter()
            .map(|t| {
                let (done, failed, returned) = t.counts.get();
                let held = t.tune.as_ref().and_then(|h| h.status.lock().ok().and_then(|s| s.held));
                serde_json::json!({
                    "url": t.conn.backend.url(),
                    "in_flight": t.limiter.in_flight(),
                    "limit": t.limiter.limit(),
                    "held": held,
                    "lanes": t.conn.info.kind.lanes(),
                    "done": done,
                    "failed": failed,
                    "returned": returned,
                    "outages": t.health.outages(),
                    "paused": t.health.is_paused(),
                    "jobs_per_s": done as f64 / secs,
                })
            })
            .collect();
        serde_json::Value::Array(servers)
    }

    /// Stops every controller: each server's concurrency and share of the run, for the summary.
    pub async fn finish(self) -> Vec<(ConcurrencyReport, ServerShare)> {
        let targets = std::mem::take(&mut *self.lock());
        let mut reports = Vec::new();
        for t in targets {
            reports.push(t.finish().await);
        }
        reports
    }
}

/// One target as the progress display sees it.
pub struct TargetView {
    url: String,
    limiter: Limiter,
    health: Health,
    counts: Arc<TargetCounts>,
}

impl TargetView {
    /// The server, its requests in flight and limit, its answers, and whether it is paused.
    pub fn line(&self) -> String {
        let (done, _, returned) = self.counts.get();
        let paused = if self.health.is_paused() { " (unreachable: paused)" } else { "" };
        let mut s = format!(
            "{} {}/{} in flight, {done} done{paused}",
            self.url,
            self.limiter.in_flight(),
            self.limiter.limit()
        );
        if returned > 0 {
            s += &format!(", {returned} handed to others");
        }
        s
    }
}

/// The models `conn` takes jobs for: the ones it lists, or any name for a server that serves one model
/// whatever the request names (a llama-server that is not a router, the engine).
pub(super) fn models_of(conn: &Connection) -> Models {
    let single = conn.info.models.len() <= 1;
    let any = match conn.info.kind {
        ServerKind::Engine { .. } => true,
        ServerKind::LlamaServer { .. } | ServerKind::Unknown => single && conn.backend.api() == Api::Openai,
        _ => false,
    };
    Models { listed: conn.info.models.clone(), any }
}

/// Refuses, before anything is sent, models that no server has: names each model and the servers tried.
pub fn check_models(targets: &[RunTarget], models: &[String]) -> anyhow::Result<()> {
    let listed: Vec<Models> = targets.iter().map(|t| models_of(&t.conn)).collect();
    let refs: Vec<&Models> = listed.iter().collect();
    let missing: Vec<&String> = models.iter().filter(|m| eligible(&refs, Some(m)).is_empty()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let servers: Vec<String> =
        targets.iter().map(|t| format!("{} (has: {})", t.conn.backend.url(), t.conn.info.models.join(", "))).collect();
    let pull = match targets.iter().any(|t| t.conn.backend.api() == Api::Ollama) {
        true => format!("; pull it with `ollama pull {}`", missing[0]),
        false => String::new(),
    };
    Err(setup_error(format!(
        "model {} is on none of the servers: {}{pull}",
        missing.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", "),
        servers.join("; ")
    )))
}

/// The limiter and, for `--concurrency auto`, the controller that moves it and the channel that feeds it.
fn concurrency(args: &RunArgs, conn: &Connection) -> (Limiter, Option<UnboundedSender<Sample>>, Option<TuneHandle>) {
    match args.send.concurrency {
        Concurrency::Fixed(n) => (Limiter::new(n), None, None),
        Concurrency::Auto => {
            let limiter = Limiter::new(1);
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let max = conn.info.kind.ceiling(args.send.max_concurrency as usize);
            let cfg = ControllerConfig { max, ..Default::default() };
            let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
            let controller = Controller::for_lanes(cfg, clock.now(), conn.info.kind.start_level());
            let (kind, api_key) = (conn.info.kind, args.conn.api_key.as_ref());
            let busy = BusySampler::new(kind, conn.backend.url(), api_key, BusySampler::RUN_EVERY);
            let handle = spawn_controller_with(controller, limiter.clone(), rx, busy, clock, kind.parallel_fix());
            (limiter, Some(tx), Some(handle))
        }
    }
}

/// The concurrency of one server: what auto's controller ended with (`tuned`), or the fixed level.
fn concurrency_report(tuned: Option<TuneStatus>, limit: usize, server_slots: Option<usize>) -> ConcurrencyReport {
    match tuned {
        None => ConcurrencyReport {
            mode: ConcurrencyMode::Fixed,
            held: limit,
            searching: false,
            max_tried: None,
            changes: None,
            effective_lanes: None,
            server_slots,
            server_busy_max: None,
            notes: Vec::new(),
            faults: None,
        },
        Some(t) => ConcurrencyReport {
            mode: ConcurrencyMode::Auto,
            held: t.held.unwrap_or(limit),
            searching: t.held.is_none(),
            max_tried: Some(t.max_tried),
            changes: Some(t.changes),
            effective_lanes: t.lanes,
            server_slots,
            server_busy_max: t.busy_max,
            notes: t.notes,
            faults: Some(t.faults),
        },
    }
}
