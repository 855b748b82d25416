//! The controller: finds and holds the smallest concurrency whose sustained throughput is within the noise
//! band of the best measured, and says why each time it moves.
//!
//! Throughput, not latency, steers it: on a batching server latency rises long before throughput stops growing,
//! so latency-driven limiters (Vegas, Gradient2) settle too low. The shape:
//!
//! - Measure in windows of at least `min_window`, two latencies and `2 × level` completions, and at least 8 (so
//!   a window holds many answers even when output lengths vary 10×); the rate is tokens per second of latency
//!   times the mean number in flight (Little's law), which answers arriving in cohorts cannot bias; drop the
//!   first window after every change (requests sent at the old level are still finishing; the very first window
//!   also holds model loads and cold caches). A level is measured when its last windows agree within 10%, or
//!   after `max_windows` (then their median).
//! - Climb by doubling from 1 until two doublings in a row gain nothing clear of the noise band over the best
//!   so far, or one clearly loses after one that paid; then search below the smallest level within the band of
//!   the best for a smaller one still in it. Started from a level learned elsewhere (a server's lanes): climb
//!   while one doubling pays, then halve while the rate stays in the band, and search between the first
//!   clearly worse level and the one above it.
//! - Hold, and now and then probe a quarter above and below, comparing against the windows just before and
//!   after the probe so slow drift cancels; move only when the difference is clear of the noise.
//! - Failed attempts (429, 503, timeouts, resets, 500s) are backpressure only when their share grows with the
//!   level, as a bounded queue answering 503 past its depth does: a level whose share is clearly above the level
//!   below's (by 10 points, half as much again, and three standard errors) is cut by a quarter and its ceiling
//!   remembered for a while. Where the level below was measured long ago (or never), it is measured again first
//!   ([`State::Check`]). A share that is the same at every level (a flaky proxy, a network that drops some
//!   connections) is the server's or the network's fault: the retries absorb it and the level is kept.
//! - Requests held far longer than any answer (stalled until their timeout) are counted apart from the working
//!   ones ([`Controller::stall_after`]): they hold a permit but do no work, and counting them as working would
//!   inflate every level's rate by an amount that shrinks as latency grows, flattening the climb.
//! - Where the server counts its busy lanes ([`Controller::on_busy`], sampled by the run), the most it ran at
//!   once is evidence: a doubling the server ran no more requests for counts as a gain only when clearly beyond
//!   the noise, the best level is capped by it ([`best::pick`]), and a server never seen running two is
//!   serialized. The noise band is the median spread of the levels' own windows, the configured band its floor
//!   ([`Band::measured`]).
//!
//! The core is synchronous and reads time only from its arguments, so unit tests drive it with synthetic time.

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use super::best::{self, Band};

/// What the controller is told about each finished attempt.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Output tokens of a successful answer (0 for embeddings or unknown).
    pub tokens: u64,
    /// End-to-end latency of the attempt.
    pub latency: Duration,
    /// How it ended.
    pub outcome: SampleOutcome,
}

/// How an attempt ended, as far as the controller cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleOutcome {
    /// An answer.
    Ok,
    /// A transient failure (429, 503, a timeout, a reset, a 500): backpressure only if its share grows with the
    /// level.
    Fault,
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Lowest level.
    pub min: usize,
    /// Highest level (`--max-concurrency`).
    pub max: usize,
    /// Relative difference treated as noise.
    pub noise: f64,
    /// Shortest measurement window.
    pub min_window: Duration,
    /// Longest window (closes with at least 3 completions even if fewer than wanted arrived).
    pub max_window: Duration,
    /// Windows after which a level is taken as measured even if they disagree.
    pub max_windows: usize,
    /// Windows at the held level between probes.
    pub probe_every: usize,
    /// How long a backpressure ceiling is remembered.
    pub ceiling_ttl: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            min: 1,
            max: 256,
            noise: Band::RUN.fraction(),
            min_window: Duration::from_millis(500),
            max_window: Duration::from_secs(60),
            max_windows: 5,
            probe_every: 20,
            ceiling_ttl: Duration::from_secs(120),
        }
    }
}

/// A change of the limit, with its reason (logged at info level).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The old level.
    pub from: usize,
    /// The new level.
    pub to: usize,
    /// Why, e.g. `+11% tokens/s`.
    pub reason: String,
}

/// What the controller is doing, for the progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Doubling while it pays.
    #[default]
    Climbing,
    /// Searching between the last two levels.
    Refining,
    /// Holding the chosen level.
    Holding,
    /// Trying a level above or below the held one.
    Probing,
}

impl Phase {
    /// Short name for the progress display.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Climbing => "climbing",
            Phase::Refining => "refining",
            Phase::Holding => "holding",
            Phase::Probing => "probing",
        }
    }
}

/// One level's measurement.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Output tokens (or jobs) per second.
    rate: f64,
    /// Median latency.
    latency: Duration,
}

/// The faults a controller measured and how it judged them: backpressure (cuts, for faults whose share grew with
/// the level) apart from a steady share (checks that found the share the same below).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultCounts {
    /// Attempts measured (those sent while a level settled are left out).
    pub attempts: u64,
    /// Of those, the failed ones (429, 503, timeouts, resets, 500s, bad answers).
    pub failed: u64,
    /// Cuts of the level because the share of faults grew with it: backpressure.
    pub cuts: u64,
    /// Checks of a lower level that found the share of faults no smaller there: not backpressure.
    pub steady_checks: u64,
}

/// One closed measurement window at the current level.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Output tokens (or jobs) per second.
    rate: f64,
    /// Median latency of its answers.
    latency: Duration,
    /// Its attempts, and how many failed.
    tally: Tally,
}

/// Attempts and failed attempts: a share of faults, with its weight.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tally {
    attempts: u64,
    faults: u64,
}

impl Tally {
    fn share(self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.faults as f64 / self.attempts as f64
        }
    }

    fn add(self, o: Tally) -> Tally {
        Tally { attempts: self.attempts + o.attempts, faults: self.faults + o.faults }
    }

    /// Whether this share of faults is clearly above `below`'s: by at least [`FAULT_GROWTH`], by half as much
    /// again, and by three standard errors of the difference (pooled two-proportion test). The margins are wide
    /// because faults come in clusters (a burst of 429, a proxy restarting) that the test's independence
    /// misjudges, while a queue past its depth refuses a share growing by tens of points per step.
    fn clearly_above(self, below: Tally) -> bool {
        if self.attempts < FAULT_MIN_ATTEMPTS || below.attempts < FAULT_MIN_ATTEMPTS {
            return false;
        }
        let pooled = self.add(below).share();
        let se = (pooled * (1.0 - pooled) * (1.0 / self.attempts as f64 + 1.0 / below.attempts as f64)).sqrt();
        let (here, there) = (self.share(), below.share());
        here - there > FAULT_GROWTH.max(3.0 * se) && here >= 1.5 * there
    }
}

/// A level's share of faults as last measured, and when.
#[derive(Debug, Clone, Copy)]
struct FaultShare {
    tally: Tally,
    at: Duration,
}

/// What a check of the level below returns to when the faults turn out not to follow load.
#[derive(Debug, Clone, Copy)]
enum Resume {
    Climb { flat: u8 },
    Refine { lo: usize, hi: usize, steps: u8 },
    Descend,
    Hold { up_next: bool, gap: usize },
}

impl Resume {
    fn state(self) -> State {
        match self {
            Resume::Climb { flat } => State::Climb { flat },
            Resume::Refine { lo, hi, steps } => State::Refine { lo, hi, steps },
            Resume::Descend => State::Descend,
            Resume::Hold { up_next, gap } => State::Hold { windows: 0, up_next, gap },
        }
    }
}

/// What is left out of the measurement after a change.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Settle {
    /// The whole first window of the run: model loads, cold caches, the first responses.
    FirstWindow,
    /// Answers until this time: requests sent at the old level are still finishing.
    Until(Duration),
    /// Measuring.
    Done,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Doubling; `flat` counts doublings in a row that gained nothing clear of the noise over the best.
    Climb { flat: u8 },
    /// Searching for the smallest level within the band of `best` in (lo, hi).
    Refine { lo: usize, hi: usize, steps: u8 },
    /// Halving from a start learned elsewhere while the rate stays within the band of the best: the lanes a
    /// server reports bound what helps, but its batching may pay off far below them.
    Descend,
    /// Holding; the next probe comes after `gap` windows (the gap doubles after each probe that changes nothing).
    Hold { windows: usize, up_next: bool, gap: usize },
    /// Probing `probe` from `held`: `before` is the held level's rate just before, `measured` the probe's rate
    /// once known (then the held level is measured again, after).
    Probe { held: usize, probe: usize, before: f64, measured: Option<f64>, gap: usize },
    /// Faults at `from` look higher than below it: measuring this lower level's share now, to tell faults that
    /// follow load (cut) from a steady share (go back to `from` and `resume`).
    Check { from: usize, resume: Resume },
}

/// The controller's state. Feed it samples and ticks; apply the decisions it returns to the limiter.
pub struct Controller {
    cfg: ControllerConfig,
    level: usize,
    state: State,
    window_start: Duration,
    tokens: u64,
    jobs: u64,
    faults: u64,
    latencies: Vec<Duration>,
    /// When the level last changed.
    changed_at: Duration,
    /// ∫ in-flight dt over the window, from ticks.
    in_flight_area: f64,
    last_tick: Duration,
    /// Completed windows at the current level (settling excluded).
    windows: Vec<Window>,
    settle: Settle,
    /// Median latency of the last window: how long requests sent before a change take to drain.
    last_latency: Duration,
    measured: BTreeMap<usize, Measured>,
    ceiling: Option<(usize, Duration)>,
    /// Whether jobs (not tokens) are the unit: no sample so far reported tokens.
    by_jobs: bool,
    serialized: bool,
    notes: Vec<String>,
    /// Doublings in a row that gain nothing clear of the noise before the climb stops.
    patience: u8,
    /// The most requests the server reported processing at once, per level (settling excluded).
    busy: BTreeMap<usize, usize>,
    /// The spread of each measured level's windows ([`best::spread`]), for the measured noise band.
    spreads: BTreeMap<usize, f64>,
    /// Each level's share of failed attempts over its last windows, when last measured.
    fault_shares: BTreeMap<usize, FaultShare>,
    /// The longest answer of the last window: a request in flight several times longer is stalled.
    longest: Duration,
    /// Every attempt measured (settling excluded), and the failed ones.
    seen: Tally,
    /// Cuts for faults that grew with the level.
    cuts: u64,
    /// Checks that found the share of faults steady across levels (so not backpressure).
    steady_checks: u64,
}

impl Controller {
    /// A controller starting at `cfg.min` at time `now`.
    pub fn new(cfg: ControllerConfig, now: Duration) -> Controller {
        let level = cfg.min.max(1);
        Controller {
            cfg,
            level,
            state: State::Climb { flat: 0 },
            window_start: now,
            tokens: 0,
            jobs: 0,
            faults: 0,
            latencies: Vec::new(),
            in_flight_area: 0.0,
            last_tick: now,
            changed_at: now,
            windows: Vec::new(),
            settle: Settle::FirstWindow,
            last_latency: Duration::ZERO,
            measured: BTreeMap::new(),
            ceiling: None,
            by_jobs: true,
            serialized: false,
            notes: Vec::new(),
            patience: 2,
            busy: BTreeMap::new(),
            spreads: BTreeMap::new(),
            fault_shares: BTreeMap::new(),
            longest: Duration::ZERO,
            seen: Tally::default(),
            cuts: 0,
            steady_checks: 0,
        }
    }

    /// A controller starting its climb at `level`: the lanes the server says it has (llama-server's slots), or
    /// the level another model on the same server settled at (lanes and threads are the server's). One doubling
    /// that gains nothing ends the climb (the start is informed, so a flat first doubling is not a CPU server's
    /// flat start at 1), and the search below halves while the rate stays within the band of the best (lanes bound
    /// what helps, but a batching server may gain nothing past a knee far below them), then searches between the
    /// first clearly worse level and the one above it. Climbing from 1 to a server's lanes costs a short run much
    /// of its time.
    pub fn starting_at(cfg: ControllerConfig, now: Duration, level: usize) -> Controller {
        let mut c = Controller::new(cfg, now);
        c.level = level.clamp(c.cfg.min.max(1), c.cfg.max);
        c.patience = 1;
        c
    }

    /// A controller for a server that says it runs `lanes` requests at once (if it says): starting at its
    /// lanes when there are several, else from 1.
    pub fn for_lanes(cfg: ControllerConfig, now: Duration, lanes: Option<usize>) -> Controller {
        match lanes {
            Some(n) if n > 1 => Controller::starting_at(cfg, now, n),
            _ => Controller::new(cfg, now),
        }
    }

    /// The current level.
    pub fn level(&self) -> usize {
        self.level
    }

    /// What it is doing.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Climb { .. } => Phase::Climbing,
            State::Refine { .. } | State::Descend => Phase::Refining,
            State::Hold { .. } => Phase::Holding,
            State::Probe { .. } | State::Check { .. } => Phase::Probing,
        }
    }

    /// How long a request may be in flight before it counts as stalled rather than working: three times the
    /// longest answer of the last window (`None` before any answer). The caller counts such requests apart
    /// ([`crate::tune::Limiter::held_longer_than`]) and ticks with the working ones only.
    pub fn stall_after(&self) -> Option<Duration> {
        (self.longest > Duration::ZERO).then(|| self.longest * 3)
    }

    /// The permits to give with `stalled` requests out: the level counts working requests, so each stalled one
    /// gets a permit beside it, up to the level again and never past the configured maximum (a server that
    /// hangs every request is then sent at most twice the level).
    pub fn permits(&self, stalled: usize) -> usize {
        (self.level + stalled.min(self.level)).min(self.cfg.max.max(self.level))
    }

    /// The attempts it measured, how many failed, and how those faults were judged.
    pub fn faults(&self) -> FaultCounts {
        FaultCounts {
            attempts: self.seen.attempts,
            failed: self.seen.faults,
            cuts: self.cuts,
            steady_checks: self.steady_checks,
        }
    }

    /// Messages for the user that arose since the last call (e.g. "the server runs one request at a time").
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// The level held once the search is over.
    pub fn held_level(&self) -> Option<usize> {
        match self.state {
            State::Hold { .. } | State::Probe { .. } => Some(self.held()),
            _ => None,
        }
    }

    /// The smallest measured level within the noise band of the best measured rate, once anything is measured:
    /// the best guess so far of where it will settle ([`best::best_level`], the rule bench and doctor use too),
    /// in the measured band and capped by the most requests the server reported busy at once, where it reports.
    pub fn best_level(&self) -> Option<usize> {
        let points: Vec<(usize, f64)> = self.measured.iter().map(|(l, m)| (*l, m.rate)).collect();
        best::best_level(&points, self.band(), self.server_busy_max())
    }

    /// The most requests the server reported processing at once at any level, once it reported a busy one.
    pub fn server_busy_max(&self) -> Option<usize> {
        self.busy.values().copied().max().filter(|&n| n > 0)
    }

    /// The noise band: the median spread of the measured levels' windows, at least the configured band.
    pub fn band(&self) -> Band {
        Band::measured(Band::new(self.cfg.noise), self.spreads.values().copied())
    }

    /// Records the server's own count of requests it is processing at time `now`. Readings while requests sent
    /// at an old level drain are left out, as their answers are: they tell of the old level.
    pub fn on_busy(&mut self, now: Duration, processing: usize) {
        if self.settling_until(now) {
            return;
        }
        let most = self.busy.entry(self.level).or_default();
        *most = (*most).max(processing);
    }

    /// Whether the server ran no more requests at once at this level than at the level below it: then more in
    /// flight only waited in its queue, and a higher rate is the client's round trips hidden, or noise.
    fn busy_did_not_grow(&self) -> bool {
        let below = self.busy.range(..self.level).next_back().map(|(_, &n)| n);
        match (self.busy.get(&self.level).copied(), below) {
            (Some(here), Some(below)) => here > 0 && here <= below,
            _ => false,
        }
    }

    /// The effective parallelism the server showed, once known: 1 for a serialized server, else the level
    /// where throughput stopped growing, never more than the server reported processing at once (a level above
    /// that may be held for hiding the client's round trips, but the server's lanes are its own count).
    pub fn effective_lanes(&self) -> Option<usize> {
        if self.serialized {
            return Some(1);
        }
        let held = self.held_level()?;
        Some(self.server_busy_max().map_or(held, |busy| held.min(busy)))
    }

    fn held(&self) -> usize {
        match self.state {
            State::Probe { held, .. } => held,
            State::Check { from, .. } => from,
            _ => self.level,
        }
    }

    /// Records one finished attempt at time `now`; returns a decision if the limit should change.
    pub fn on_sample(&mut self, now: Duration, s: Sample) -> Option<Decision> {
        // Only requests sent at the current level say anything about it.
        if self.settling_until(now) || now.saturating_sub(s.latency) < self.changed_at {
            return None;
        }
        match s.outcome {
            SampleOutcome::Ok => {
                self.jobs += 1;
                self.tokens += s.tokens;
                if s.tokens > 0 {
                    self.by_jobs = false;
                }
                self.latencies.push(s.latency);
            }
            SampleOutcome::Fault => self.faults += 1,
        }
        None
    }

    /// Called regularly with the number of requests in flight and working (stalled ones, held past
    /// [`Controller::stall_after`], left out); closes the window once it is long enough and returns a decision
    /// if the limit should change. Windows close only here, on the clock, never on an answer.
    pub fn tick(&mut self, now: Duration, in_flight: usize) -> Option<Decision> {
        self.in_flight_area += in_flight as f64 * now.saturating_sub(self.last_tick).as_secs_f64();
        self.last_tick = now;
        if self.settling_until(now) {
            return None;
        }
        let elapsed = now.saturating_sub(self.window_start);
        // At least 8 answers: at low levels a window of `2 × level` would be one or two answers, too few to
        // average output lengths over; asking for more makes a climb from 1 spend seconds at its slowest levels.
        let wanted = (2 * self.level as u64).max(8);
        // A window spans at least two typical latencies, so answers sent together do not all land in one.
        let typical = self.latencies.get(self.latencies.len() / 2).copied().unwrap_or_default();
        let tally = Tally { attempts: self.jobs + self.faults, faults: self.faults };
        let full = elapsed >= self.cfg.min_window.max(typical * 2) && tally.attempts >= wanted;
        let overdue = elapsed >= self.cfg.max_window && tally.attempts >= 3;
        if !(full || overdue) {
            return None;
        }
        // Little's law: rate = units per second of latency × mean number in flight. Counting answers per second
        // of window would be biased when answers arrive in cohorts (requests sent together, equal lengths, finish
        // together): a window holding one cohort more or less is off by a cohort. Per-request ratios are not.
        let units = if self.by_jobs { self.jobs } else { self.tokens };
        let latency_sum: f64 = self.latencies.iter().map(Duration::as_secs_f64).sum();
        let mean_in_flight = self.in_flight_area / elapsed.as_secs_f64().max(1e-9);
        let rate = if latency_sum > 0.0 { units as f64 / latency_sum * mean_in_flight } else { 0.0 };
        self.latencies.sort_unstable();
        // A window of nothing but faults has no answers to time: it keeps the last latency.
        let latency = self.latencies.get(self.latencies.len() / 2).copied().unwrap_or(self.last_latency);
        if let Some(&longest) = self.latencies.last() {
            self.longest = longest;
        }
        self.reset_window(now);
        self.last_latency = latency;
        if self.settle == Settle::FirstWindow {
            self.settle = Settle::Done;
            return None;
        }
        self.seen = self.seen.add(tally);
        self.windows.push(Window { rate, latency, tally });
        if self.windows.len() > self.cfg.max_windows {
            self.windows.remove(0);
        }
        if let Some(decision) = self.judge_faults(now) {
            return decision;
        }
        let m = self.level_measured()?;
        self.measured.insert(self.level, m);
        self.note_spread();
        self.decide(now, m)
    }

    /// Whether answers are still being left out after a change; starts the window when settling ends.
    fn settling_until(&mut self, now: Duration) -> bool {
        match self.settle {
            Settle::Until(t) if now < t => true,
            Settle::Until(_) => {
                self.settle = Settle::Done;
                self.reset_window(now);
                false
            }
            _ => false,
        }
    }

    fn reset_window(&mut self, now: Duration) {
        self.window_start = now;
        self.in_flight_area = 0.0;
        self.tokens = 0;
        self.jobs = 0;
        self.faults = 0;
        self.latencies.clear();
    }

    /// Keeps the spread of the windows the current level was measured on; a held level's windows, many and
    /// from a long stretch, are drift as much as noise, and a single window shows none.
    fn note_spread(&mut self) {
        if matches!(self.state, State::Hold { .. }) || self.windows.len() < 2 {
            return;
        }
        let n = self.windows.len();
        let rates: Vec<f64> = self.windows.iter().map(|w| w.rate).collect();
        // The windows level_measured used: the last two when they agree, else all of them.
        let last = &rates[n - 2..];
        let used = if best::spread(last) <= STEADY_SPREAD { last } else { &rates[..] };
        self.spreads.insert(self.level, best::spread(used));
    }

    /// The current level's measurement once its windows are steady (or there are enough of them).
    fn level_measured(&self) -> Option<Measured> {
        let n = self.windows.len();
        if matches!(self.state, State::Hold { .. }) {
            // Holding: every window counts; the rate is the mean of the last three.
            let last = &self.windows[n.saturating_sub(3)..];
            let rate = last.iter().map(|w| w.rate).sum::<f64>() / last.len() as f64;
            return Some(Measured { rate, latency: last[last.len() - 1].latency });
        }
        if let (State::Climb { .. }, 1) = (self.state, n) {
            // A doubling that clearly pays (well beyond the noise) needs no second window to confirm it.
            let prev = self.measured.range(..self.level).next_back().map(|(_, m)| m);
            if prev.is_some_and(|p| self.windows[0].rate > p.rate * (1.0 + 3.0 * self.cfg.noise)) {
                return Some(Measured { rate: self.windows[0].rate, latency: self.windows[0].latency });
            }
        }
        let need = 2;
        if n < need {
            return None;
        }
        let last = &self.windows[n - need..];
        let (lo, hi) = last.iter().fold((f64::MAX, 0f64), |(lo, hi), w| (lo.min(w.rate), hi.max(w.rate)));
        let steady = hi <= lo * STEADY_RATIO;
        if !steady && n < self.cfg.max_windows {
            return None;
        }
        let pick = if steady { last } else { &self.windows[..] };
        let mut rates: Vec<f64> = pick.iter().map(|w| w.rate).collect();
        let mut lats: Vec<Duration> = pick.iter().map(|w| w.latency).collect();
        rates.sort_by(f64::total_cmp);
        lats.sort_unstable();
        let rate = if steady { rates.iter().sum::<f64>() / rates.len() as f64 } else { rates[rates.len() / 2] };
        Some(Measured { rate, latency: lats[lats.len() / 2] })
    }

    fn unit(&self) -> &'static str {
        if self.by_jobs {
            "jobs/s"
        } else {
            "tokens/s"
        }
    }

    fn cap(&self, now: Duration) -> usize {
        match self.ceiling {
            Some((c, until)) if now < until => c.saturating_sub(1).max(self.cfg.min),
            _ => self.cfg.max,
        }
    }

    fn decide(&mut self, now: Duration, m: Measured) -> Option<Decision> {
        let band = self.band().fraction();
        match self.state {
            State::Climb { flat } => self.climb(now, m, flat, band),
            State::Refine { lo, hi, steps } => {
                let best = self.best_rate();
                let (lo, hi) = if Band::new(band).within(m.rate, best) { (lo, self.level) } else { (self.level, hi) };
                self.refine_step(now, lo, hi, steps)
            }
            State::Descend => {
                if Band::new(band).within(m.rate, self.best_rate()) {
                    let next = (self.level / 2).max(self.cfg.min);
                    if next == self.level {
                        return self.hold(now, next, format!("the lowest level, {next}, is as fast as any"));
                    }
                    let reason = format!(
                        "{:.1} {} at {} is within {:.0}% of the best, trying {next}",
                        m.rate,
                        self.unit(),
                        self.level,
                        band * 100.0
                    );
                    return Some(self.set(now, next, State::Descend, reason));
                }
                // Clearly worse: the smallest good level is between this one and the one above it.
                let hi = self.best_level().unwrap_or(self.level * 2);
                self.refine_step(now, self.level, hi, 0)
            }
            State::Hold { windows, up_next, gap } => {
                let windows = windows + 1;
                if windows < gap {
                    self.state = State::Hold { windows, up_next, gap };
                    return None;
                }
                let held = self.level;
                let step = (held / 4).max(1);
                let target = if up_next {
                    (held + step).min(self.cap(now))
                } else {
                    held.saturating_sub(step).max(self.cfg.min)
                };
                self.state = State::Hold { windows: 0, up_next: !up_next, gap };
                if target == held {
                    return None;
                }
                let reason = format!("probing {} (held {held})", if target > held { "above" } else { "below" });
                Some(self.set(
                    now,
                    target,
                    State::Probe { held, probe: target, before: m.rate, measured: None, gap },
                    reason,
                ))
            }
            State::Probe { held, probe, before, measured: None, gap } => {
                let state = State::Probe { held, probe, before, measured: Some(m.rate), gap };
                Some(self.set(now, held, state, format!("probe of {probe} measured, back to {held} to compare")))
            }
            State::Probe { held, probe, before, measured: Some(probe_rate), gap } => {
                // Compare with the held level's windows just before and just after, so slow drift cancels.
                let base = (before + m.rate) / 2.0;
                // A probe must clear the noise twice over to move up (each move up adds waiting), and lose at
                // most half the band to move down; so noise alone does not walk the level around.
                let keep = if probe > held {
                    probe_rate > base * (1.0 + 2.0 * band)
                } else {
                    probe_rate >= base * (1.0 - band / 2.0)
                };
                if keep {
                    let reason = format!("{:+.0}% {} at {probe} vs {held}", pct(probe_rate, base), self.unit());
                    return self.hold(now, probe, reason);
                }
                let gap = (gap * 2).min(self.cfg.probe_every * 8);
                self.state = State::Hold { windows: 0, up_next: probe < held, gap };
                None
            }
            // A check is concluded by `judge_faults` before any rate is looked at.
            State::Check { .. } => None,
        }
    }

    /// The share of faults at the current level against the level below, once a window closed: `Some` when
    /// that settles the window (a cut, a check started or concluded, or a check still waiting for attempts).
    fn judge_faults(&mut self, now: Duration) -> Option<Option<Decision>> {
        let here = self.windows.iter().fold(Tally::default(), |t, w| t.add(w.tally));
        self.fault_shares.insert(self.level, FaultShare { tally: here, at: now });
        if let State::Check { from, resume } = self.state {
            if here.attempts < FAULT_MIN_ATTEMPTS {
                return Some(None);
            }
            let above = self.fault_shares.get(&from).map_or(Tally::default(), |s| s.tally);
            if above.clearly_above(here) {
                let why = fault_growth(from, above, self.level, here);
                return Some(Some(self.back_off(now, &why)));
            }
            // Said in the decision's reason and counted for the summary; not a note, which carries the
            // server's fix for its lanes.
            self.steady_checks += 1;
            let reason = format!(
                "faults do not grow with the level ({:.0}% of attempts at {from} in flight, {:.0}% at {}): not \
                 backpressure, back to {from}",
                above.share() * 100.0,
                here.share() * 100.0,
                self.level
            );
            return Some(Some(self.set(now, from, resume.state(), reason)));
        }
        if here.share() < FAULT_GROWTH || here.attempts < FAULT_MIN_ATTEMPTS || self.level <= self.cfg.min {
            return None;
        }
        let below = self.fault_shares.range(..self.level).next_back().map(|(&l, s)| (l, *s));
        match below {
            Some((_, b)) if now.saturating_sub(b.at) <= FAULT_SHARE_FRESH => {
                if here.clearly_above(b.tally) {
                    let why = fault_growth(self.level, here, below.map_or(0, |b| b.0), b.tally);
                    return Some(Some(self.back_off(now, &why)));
                }
                None
            }
            // Measured long ago, or never: measure below again before cutting, so a share that is the same at
            // every level is not taken for backpressure.
            Some((_, b)) if !here.clearly_above(b.tally) => None,
            _ => {
                let resume = match self.state {
                    State::Climb { flat } => Resume::Climb { flat },
                    State::Refine { lo, hi, steps } => Resume::Refine { lo, hi, steps },
                    State::Descend => Resume::Descend,
                    State::Hold { up_next, gap, .. } => Resume::Hold { up_next, gap },
                    // A probe goes back to its held level anyway; that level's windows are judged there.
                    State::Probe { .. } | State::Check { .. } => return None,
                };
                let from = self.level;
                let to = below.map_or(from / 2, |b| b.0).max(self.cfg.min);
                let reason = format!(
                    "{:.0}% of attempts failed at {from}: measuring {to} to see whether that grows with the level",
                    here.share() * 100.0
                );
                Some(Some(self.set(now, to, State::Check { from, resume }, reason)))
            }
        }
    }

    /// A climbing level measured: double again, or end the climb (serialized, refine, or at the limit).
    fn climb(&mut self, now: Duration, m: Measured, flat: u8, band: f64) -> Option<Decision> {
        let prev = self.level / 2;
        let best_before =
            self.measured.iter().filter(|(l, _)| **l < self.level).map(|(_, m)| m.rate).fold(0.0, f64::max);
        // A doubling that gains nothing clear of the noise may still be followed by one that does (a CPU
        // server can be flat from 1 to 2 in flight and gain at 4 and 8), so stop after two in a row. One
        // that clearly loses, past a doubling that paid, ends the climb at once: the server is past its
        // knee, and the next doubling would only queue twice as much.
        let paid = flat == 0 && self.level > 2;
        // The server ran no more at once than below: only a gain clear of both levels' noise counts.
        let gained = if self.busy_did_not_grow() {
            Band::new(band).clearly_above(m.rate, best_before)
        } else {
            m.rate > best_before * (1.0 + band)
        };
        let flat = if paid && best_before > 0.0 && m.rate < best_before * (1.0 - band) {
            self.patience
        } else if best_before > 0.0 && !gained {
            flat + 1
        } else {
            0
        };
        let next = (self.level * 2).min(self.cap(now));
        let at_limit = next <= self.level;
        // Started at the limit (a server's lanes at --max-concurrency): nothing above to try, so go down.
        let nothing_below = self.measured.range(..self.level).next().is_none();
        if flat >= self.patience || (at_limit && (flat == 1 || nothing_below)) {
            self.check_serialized(m);
            if self.serialized {
                // One lane: a second request in flight only hides the client's round trip.
                let one = self.measured.get(&1).map_or(0.0, |m| m.rate);
                let two_pays = self.measured.get(&2).is_some_and(|m| m.rate > one * (1.0 + band));
                let level = if two_pays { 2 } else { 1 };
                return self.hold(now, level, "the server runs one request at a time".into());
            }
            return self.start_refine(now);
        }
        if at_limit {
            return self.hold(now, self.level, format!("at the limit {}", self.level));
        }
        let reason = match self.measured.get(&prev).filter(|_| prev < self.level) {
            Some(p) => {
                format!("{:+.0}% {} from {prev} to {}, trying {next}", pct(m.rate, p.rate), self.unit(), self.level)
            }
            None => format!("{:.1} {} at {}, trying {next}", m.rate, self.unit(), self.level),
        };
        Some(self.set(now, next, State::Climb { flat }, reason))
    }

    fn best_rate(&self) -> f64 {
        self.measured.values().map(|m| m.rate).fold(0.0, f64::max)
    }

    fn start_refine(&mut self, now: Duration) -> Option<Decision> {
        // The answer is the smallest measured level within the band of the best; the largest measured level below
        // it (half of it, after a climb from 1) was clearly worse, so search between the two for anything smaller
        // that is still within the band. Nothing measured below (a climb from a level learned elsewhere): halve
        // until a level is clearly worse, then search between.
        let chosen = self.best_level().unwrap_or(self.level);
        match self.measured.range(..chosen).next_back() {
            Some((&lo, _)) => self.refine_step(now, lo, chosen, 0),
            None if chosen / 2 >= self.cfg.min.max(1) => {
                let reason = format!("searching below {chosen}");
                Some(self.set(now, chosen / 2, State::Descend, reason))
            }
            None => self.hold(now, chosen, format!("the lowest level, {chosen}, is as fast as any")),
        }
    }

    fn refine_step(&mut self, now: Duration, lo: usize, hi: usize, steps: u8) -> Option<Decision> {
        let mid = lo + (hi - lo) / 2;
        if steps >= 2 || mid <= lo || mid >= hi || self.measured.contains_key(&mid) {
            let best = self.best_rate();
            let reason = format!(
                "{} {} at {hi} is within {:.0}% of the best measured ({:.1})",
                self.measured.get(&hi).map(|m| format!("{:.1}", m.rate)).unwrap_or_default(),
                self.unit(),
                self.band().fraction() * 100.0,
                best
            );
            return self.hold(now, hi, reason);
        }
        Some(self.set(now, mid, State::Refine { lo, hi, steps: steps + 1 }, format!("searching between {lo} and {hi}")))
    }

    fn hold(&mut self, now: Duration, level: usize, reason: String) -> Option<Decision> {
        let state = State::Hold { windows: 0, up_next: true, gap: self.cfg.probe_every };
        if level == self.level {
            self.state = state;
            return None;
        }
        Some(self.set(now, level, state, format!("holding: {reason}")))
    }

    fn set(&mut self, now: Duration, to: usize, state: State, reason: String) -> Decision {
        let from = self.level;
        self.level = to.clamp(self.cfg.min, self.cfg.max);
        self.state = state;
        self.windows.clear();
        self.changed_at = now;
        // Requests sent at the old level drain within about one latency (1.5 for margin).
        self.settle = Settle::Until(now + self.last_latency.mul_f64(1.5));
        self.reset_window(now);
        Decision { from, to: self.level, reason }
    }

    fn back_off(&mut self, now: Duration, why: &str) -> Decision {
        let from = self.held().max(self.level);
        let to = match self.state {
            // A probe above the held level drew the faults: back to the held level, the probe's the ceiling.
            State::Probe { held, probe, .. } if probe > held => held,
            _ => (from * 3 / 4).max(self.cfg.min),
        };
        self.cuts += 1;
        self.fault_shares.retain(|&l, _| l < from);
        self.ceiling = Some((from, now + self.cfg.ceiling_ttl));
        self.measured.retain(|&l, _| l < from);
        self.busy.retain(|&l, _| l < from);
        self.spreads.retain(|&l, _| l < from);
        let reason = format!("{why}: cut by a quarter, staying below {from} for {}s", self.cfg.ceiling_ttl.as_secs());
        self.set(now, to, State::Hold { windows: 0, up_next: false, gap: self.cfg.probe_every }, reason)
    }

    /// Throughput flat from 1 in flight while latency grows: the server runs one request at a time. Said once.
    fn check_serialized(&mut self, top: Measured) {
        let Some(one) = self.measured.get(&1).copied() else { return };
        let at = |level: usize, m: Measured| best::Measured { level, rate: m.rate, latency: m.latency.as_secs_f64() };
        let busy = self.server_busy_max();
        if self.serialized || !best::serialized_with(at(1, one), self.best_rate(), at(self.level, top), busy) {
            return;
        }
        self.serialized = true;
        let never_two =
            if busy == Some(1) { "; the server never reported more than one request processing" } else { "" };
        self.notes.push(format!(
            "the server runs one request at a time: {:.1} {unit} at 1 in flight and {:.1} at {}, while latency \
             grew from {} ms to {} ms{never_two}",
            one.rate,
            top.rate,
            self.level,
            one.latency.as_millis(),
            top.latency.as_millis(),
            unit = self.unit(),
        ));
    }
}

/// Attempts a share of faults needs before it is compared with another.
const FAULT_MIN_ATTEMPTS: u64 = 20;
/// The least growth of the share of faults (absolute) that counts as following the load.
const FAULT_GROWTH: f64 = 0.10;
/// How long a level's share of faults stays a fair comparison for another level's.
const FAULT_SHARE_FRESH: Duration = Duration::from_secs(60);

/// Why faults count as backpressure: the share at `hi` against the share at `lo`.
fn fault_growth(hi: usize, at_hi: Tally, lo: usize, at_lo: Tally) -> String {
    format!(
        "faults grow with the level ({:.0}% of attempts at {hi} in flight, {:.0}% at {lo})",
        at_hi.share() * 100.0,
        at_lo.share() * 100.0
    )
}

/// The last two windows of a level agree when the higher is at most this many times the lower.
const STEADY_RATIO: f64 = 1.10;
/// [`STEADY_RATIO`] as a [`best::spread`]: `(r - 1) / (r + 1)`.
const STEADY_SPREAD: f64 = (STEADY_RATIO - 1.0) / (STEADY_RATIO + 1.0);

fn pct(a: f64, b: f64) -> f64 {
    (a / b - 1.0) * 100.0
}
