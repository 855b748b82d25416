//! When to switch models: the rule that keeps switching a small share of the time.
//!
//! While a model is loaded its ready work runs. The scheduler leaves it for another model's ready work only
//! when its own runs out, or once it has run for a bounded batch: `SHARE_FACTOR` times the measured switch
//! cost (and at least `MIN_BATCH`) and another model has at least a batch's worth of ready work waiting (else it
//! looks again after a quarter batch): a switch that buys less than a batch would raise the share of time spent
//! switching, and over a short run it would add switches the work does not need. Alternating batches of at least 19 × the switch cost spend at most
//! 1 / (1 + 19) = 5% of the time switching, while every model's work (and so every job) keeps moving, which
//! one batch per step over a million jobs would not. A switch costs what the server says it spent loading
//! (Ollama's `load_duration`), otherwise the first answer's latency after the switch beyond the model's usual
//! latency; a server that holds both models (nothing to load) costs nothing and gets `MIN_BATCH` batches.
//! Before any switch is measured, a model runs until its ready work runs out.

use std::time::{Duration, Instant};

/// A batch lasts at least this many switch costs: switching stays under 1 / (1 + this) of the time.
pub const SHARE_FACTOR: u32 = 19;
/// The shortest batch, so that an unmeasured or free switch does not make the scheduler thrash.
pub const MIN_BATCH: Duration = Duration::from_secs(1);
/// Weight of a new measurement in the running switch cost.
const EWMA: f64 = 0.5;

/// Switch accounting for one server.
#[derive(Debug, Clone, Default)]
pub struct SwitchPolicy {
    since: Option<Instant>,
    /// The batch was over but no other model had a batch's worth of work: look again at this time.
    look_again: Option<Instant>,
    cost: Option<Duration>,
    /// Switches so far (the first load counts: from cold, A then B then A is three loads).
    pub switches: u64,
    /// Time spent switching, as measured.
    pub switching: Duration,
}

impl SwitchPolicy {
    /// A model was (re)started at `now`.
    pub fn switched(&mut self, now: Instant) {
        self.switches += 1;
        self.since = Some(now);
        self.look_again = None;
    }

    /// The batch is over but no other model has a batch's worth of ready work: stay a quarter batch more.
    pub fn stay(&mut self, now: Instant) {
        self.look_again = Some(now + (self.batch() / 4).max(MIN_BATCH));
    }

    /// The first answer after a switch took `latency`; the server reported `load` (if it does), and the
    /// model usually answers in `usual` (if known yet).
    pub fn first_answer(&mut self, latency: Duration, load: Option<Duration>, usual: Option<Duration>) {
        let cost = match (load, usual) {
            (Some(load), _) => load,
            (None, Some(usual)) => latency.saturating_sub(usual),
            (None, None) => return,
        };
        // The first model fed may have been loaded already: a free first "switch" says nothing about what a
        // real one costs, and taking it as the cost would cut the first batch to the minimum.
        if self.switches <= 1 && cost < MIN_BATCH / SHARE_FACTOR {
            return;
        }
        self.switching += cost;
        self.cost = Some(match self.cost {
            Some(c) => c.mul_f64(1.0 - EWMA) + cost.mul_f64(EWMA),
            None => cost,
        });
    }

    /// Whether the server seems to hold one model at a time: a switch costs a load, or is not measured yet.
    /// A server that holds both (a free switch) runs the next model's requests beside the last one's.
    pub fn one_model_at_a_time(&self) -> bool {
        self.cost.is_none_or(|c| c >= MIN_BATCH / SHARE_FACTOR)
    }

    /// How long a batch lasts before other ready work may take the server.
    pub fn batch(&self) -> Duration {
        self.cost.map(|c| c * SHARE_FACTOR).unwrap_or_default().max(MIN_BATCH)
    }

    /// Whether the current batch is done at `now`.
    /// Until a switch has been measured there is no bound: the first model runs until its ready work runs out,
    /// and that first real switch tells what one costs.
    pub fn batch_done(&self, now: Instant) -> bool {
        self.cost.is_some()
            && self.since.is_some_and(|s| now.duration_since(s) >= self.batch())
            && self.look_again.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_grow_with_the_switch_cost_so_switching_stays_under_five_percent() {
        let mut p = SwitchPolicy::default();
        let t0 = Instant::now();
        p.switched(t0);
        assert!(!p.batch_done(t0 + Duration::from_secs(3600)), "unmeasured: no bound");
        p.first_answer(Duration::from_millis(2300), None, Some(Duration::from_millis(300)));
        assert_eq!(p.batch(), Duration::from_secs(38));
        let share = p.switching.as_secs_f64() / (p.switching + p.batch()).as_secs_f64();
        assert!(share <= 0.05, "{share}");
        assert!(!p.batch_done(t0 + Duration::from_secs(37)));
        assert!(p.batch_done(t0 + Duration::from_secs(38)));
        p.switched(t0 + Duration::from_secs(38));
        p.first_answer(Duration::from_secs(9), Some(Duration::ZERO), None);
        assert_eq!((p.batch(), p.switches), (Duration::from_secs(19), 2), "the server's own load time wins");
    }

    #[test]
    fn a_first_model_that_was_loaded_already_says_nothing_about_switches() {
        let mut p = SwitchPolicy::default();
        p.switched(Instant::now());
        p.first_answer(Duration::from_millis(300), Some(Duration::from_millis(10)), None);
        assert_eq!(p.batch(), MIN_BATCH);
        p.switched(Instant::now());
        p.first_answer(Duration::from_secs(3), Some(Duration::from_secs(2)), None);
        assert_eq!(p.batch(), Duration::from_secs(38), "the first real switch sets the cost alone");
    }

    #[test]
    fn staying_after_a_batch_looks_again_a_quarter_batch_later() {
        let mut p = SwitchPolicy::default();
        let t0 = Instant::now();
        p.switched(t0);
        p.first_answer(Duration::from_secs(3), Some(Duration::from_secs(2)), None);
        let end = t0 + Duration::from_secs(38);
        assert!(p.batch_done(end));
        p.stay(end);
        assert!(!p.batch_done(end + Duration::from_millis(9400)));
        assert!(p.batch_done(end + Duration::from_millis(9500)));
        p.switched(end + Duration::from_secs(10));
        assert!(!p.batch_done(end + Duration::from_secs(11)), "a switch starts a whole batch");
    }

    #[test]
    fn only_a_measured_free_switch_lets_two_models_run_side_by_side() {
        let mut p = SwitchPolicy::default();
        assert!(p.one_model_at_a_time(), "unmeasured: assume one model at a time");
        p.switched(Instant::now());
        p.switched(Instant::now());
        p.first_answer(Duration::from_secs(3), Some(Duration::from_secs(2)), None);
        assert!(p.one_model_at_a_time());
        let mut free = SwitchPolicy::default();
        free.switched(Instant::now());
        free.switched(Instant::now());
        free.first_answer(Duration::from_millis(300), Some(Duration::ZERO), None);
        assert!(!free.one_model_at_a_time(), "a server that holds both models");
    }
}
