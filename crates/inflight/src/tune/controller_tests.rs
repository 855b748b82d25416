//! The controller's rules on synthetic measurement streams: a server model gives the completion rate at each
//! level (and time); the test feeds the completions to the controller in synthetic time.

use super::*;
use rand::{Rng, SeedableRng};

/// A synthetic server: jobs/s at a level and time, and how samples look.
struct Synth {
    rate: Box<dyn Fn(usize, f64, u64) -> f64>,
    backpressure: Box<dyn Fn(usize) -> f64>,
    noise: f64,
    /// The busy count the server reports at a level (sampled every [`BUSY_EVERY`] s); `None`: it reports none.
    busy: Box<dyn Fn(usize) -> Option<usize>>,
}

impl Synth {
    fn new(rate: impl Fn(usize, f64, u64) -> f64 + 'static) -> Synth {
        Synth { rate: Box::new(rate), backpressure: Box::new(|_| 0.0), noise: 0.0, busy: Box::new(|_| None) }
    }

    /// This server, reporting `slots` busy whenever that many or more are in flight (llama-server `/slots`).
    fn reporting_slots(mut self, slots: usize) -> Synth {
        self.busy = Box::new(move |level| Some(level.min(slots)));
        self
    }
}

/// Seconds between busy readings, as the run samples them.
const BUSY_EVERY: f64 = 0.25;

struct Trace {
    /// (time s, level) after every decision.
    levels: Vec<(f64, usize)>,
    decisions: Vec<Decision>,
    notes: Vec<String>,
    final_level: usize,
    /// Time-weighted mean level over the second half of the run.
    late_mean: f64,
}

fn drive(cfg: ControllerConfig, synth: &Synth, seconds: f64) -> Trace {
    drive_from(Controller::new(cfg, Duration::ZERO), synth, seconds)
}

fn drive_from(mut c: Controller, synth: &Synth, seconds: f64) -> Trace {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let dt = 0.005;
    let (mut t, mut acc, mut done) = (0.0f64, 0.0f64, 0u64);
    let mut factor = 1.0;
    let mut next_noise = 0.0;
    let mut next_busy = 0.0;
    let mut trace =
        Trace { levels: vec![(0.0, c.level())], decisions: vec![], notes: vec![], final_level: 0, late_mean: 0.0 };
    let mut weighted = 0.0;
    while t < seconds {
        if t >= next_noise {
            factor = 1.0 + synth.noise * rng.random_range(-1.0..=1.0);
            next_noise = t + 0.5;
        }
        let level = c.level();
        let rate = (synth.rate)(level, t, done) * factor;
        acc += rate * dt;
        t += dt;
        let now = Duration::from_secs_f64(t);
        if t > seconds / 2.0 {
            weighted += level as f64 * dt;
        }
        while acc >= 1.0 {
            acc -= 1.0;
            let outcome = if rng.random_bool((synth.backpressure)(level).clamp(0.0, 1.0)) {
                SampleOutcome::Fault
            } else {
                done += 1;
                SampleOutcome::Ok
            };
            let latency = Duration::from_secs_f64(level as f64 / rate.max(1e-9));
            if let Some(d) = c.on_sample(now, Sample { tokens: 64, latency, outcome }) {
                trace.levels.push((t, d.to));
                trace.decisions.push(d);
            }
        }
        if t >= next_busy {
            next_busy = t + BUSY_EVERY;
            if let Some(n) = (synth.busy)(level) {
                c.on_busy(now, n);
            }
        }
        if let Some(d) = c.tick(now, level) {
            trace.levels.push((t, d.to));
            trace.decisions.push(d);
        }
        trace.notes.extend(c.take_notes());
    }
    trace.final_level = c.held_level().unwrap_or(c.level());
    trace.late_mean = weighted / (seconds / 2.0);
    trace
}

fn lanes(n: usize, per_lane: f64) -> impl Fn(usize, f64, u64) -> f64 {
    move |level, _, _| per_lane * level.min(n) as f64
}

#[test]
fn four_lanes_settle_at_four() {
    let trace = drive(ControllerConfig::default(), &Synth::new(lanes(4, 7.0)), 300.0);
    assert_eq!(trace.final_level, 4, "{:?}", trace.decisions);
    assert!(trace.late_mean <= 5.0, "no needless queueing: mean {}", trace.late_mean);
    assert!(trace.decisions.iter().all(|d| !d.reason.is_empty()));
}

#[test]
fn serial_server_holds_at_one_and_says_so() {
    let trace = drive(ControllerConfig::default(), &Synth::new(lanes(1, 7.6)), 120.0);
    assert!(trace.final_level <= 2, "{:?}", trace.decisions);
    assert_eq!(trace.notes.len(), 1, "said once: {:?}", trace.notes);
    assert!(trace.notes[0].contains("one request at a time"), "{:?}", trace.notes);
}

#[test]
fn batching_knee_near_32() {
    // Throughput grows to 32 in flight, then stays flat.
    let trace = drive(ControllerConfig::default(), &Synth::new(lanes(32, 1.2)), 600.0);
    assert!((24..=40).contains(&trace.final_level), "{} {:?}", trace.final_level, trace.decisions);
}

#[test]
fn warm_up_does_not_fool_it() {
    // The first 20 completions run 5x slower.
    let synth = Synth::new(|level, _, done| if done < 20 { 1.4 } else { 7.0 } * level.min(4) as f64);
    let trace = drive(ControllerConfig::default(), &synth, 300.0);
    assert_eq!(trace.final_level, 4, "{:?}", trace.decisions);
}

#[test]
fn faults_that_grow_with_the_level_cut_by_a_quarter_and_remember_the_ceiling() {
    let mut synth = Synth::new(lanes(64, 7.0));
    synth.backpressure = Box::new(|level| if level > 12 { 0.3 } else { 0.0 });
    let trace = drive(ControllerConfig::default(), &synth, 200.0);
    let cut = trace.decisions.iter().position(|d| d.reason.contains("faults grow")).expect("a cut");
    let d = &trace.decisions[cut];
    assert_eq!(d.to, d.from * 3 / 4, "{d:?}");
    // While the ceiling is remembered, the level stays below it.
    let within_ttl: Vec<_> = trace
        .levels
        .iter()
        .filter(|(t, _)| *t > trace.levels[cut + 1].0 && *t < trace.levels[cut + 1].0 + 100.0)
        .collect();
    assert!(within_ttl.iter().all(|(_, l)| *l < d.from), "{within_ttl:?}");
    assert!(trace.final_level <= 12, "{:?}", trace.decisions);
}

#[test]
fn drift_does_not_move_the_held_level() {
    // 30% slower after 180 s; the best level stays 4.
    let synth = Synth::new(|level, t, _| if t > 180.0 { 4.9 } else { 7.0 } * level.min(4) as f64);
    let trace = drive(ControllerConfig::default(), &synth, 600.0);
    assert_eq!(trace.final_level, 4, "{:?}", trace.decisions);
    let held_moves =
        trace.decisions.iter().filter(|d| d.reason.starts_with("holding") && d.from != 4 && d.to != 4).count();
    assert_eq!(held_moves, 0, "{:?}", trace.decisions);
}

#[test]
fn noise_does_not_make_it_oscillate() {
    let mut synth = Synth::new(lanes(16, 2.0));
    synth.noise = 0.10;
    let trace = drive(ControllerConfig::default(), &synth, 900.0);
    assert!((12..=24).contains(&trace.final_level), "{} {:?}", trace.final_level, trace.decisions);
    let late: Vec<_> = trace.decisions.iter().filter(|d| !d.reason.contains("prob")).skip(8).collect();
    assert!(late.len() <= 3, "settled, few moves besides probes: {late:?}");
}

#[test]
fn a_flat_first_doubling_does_not_stop_the_climb() {
    // Measured on the test-bed llama-server (-np 8 -t 2, 2 cores): flat from 1 to 2 in flight, then +27% at 4
    // and +26% at 8, then flat or worse. Stopping at the first flat doubling would hold 1 or 2.
    let shape = |level: usize, _: f64, _: u64| {
        let tokens_per_s = match level {
            1 | 2 => 100.0,
            3 => 115.0,
            4..=5 => 128.0,
            6..=7 => 150.0,
            8..=16 => 162.0,
            _ => 134.0,
        };
        tokens_per_s / 64.0
    };
    let trace = drive(ControllerConfig::default(), &Synth::new(shape), 1200.0);
    assert!((6..=16).contains(&trace.final_level), "{} {:?}", trace.final_level, trace.decisions);
    assert!(trace.notes.is_empty(), "not a serial server: {:?}", trace.notes);
}

#[test]
fn a_level_learned_elsewhere_is_confirmed_without_climbing_from_one() {
    let trace = drive_from(
        Controller::starting_at(ControllerConfig::default(), Duration::ZERO, 32),
        &Synth::new(lanes(32, 1.2)),
        300.0,
    );
    assert!((24..=40).contains(&trace.final_level), "{} {:?}", trace.final_level, trace.decisions);
    let lowest = trace.levels.iter().map(|(_, l)| *l).min().unwrap();
    assert!(lowest >= 16, "never below half the prior: {:?}", trace.decisions);
    assert!(trace.decisions[0].reason.contains("at 32, trying 64"), "{:?}", trace.decisions[0]);
}

#[test]
fn a_prior_too_high_is_walked_down_by_halving() {
    // Four lanes, but another model on the server held 16: halving finds 4 long before any probe would.
    let trace = drive_from(
        Controller::starting_at(ControllerConfig::default(), Duration::ZERO, 16),
        &Synth::new(lanes(4, 7.0)),
        300.0,
    );
    assert_eq!(trace.final_level, 4, "{:?}", trace.decisions);
    assert!(trace.late_mean <= 5.0, "no needless queueing: mean {}", trace.late_mean);
}

#[test]
fn a_start_at_many_slots_descends_to_the_batching_knee() {
    // A server with 256 slots whose batching gains nothing past 32 in flight (the simulator's batching32 and
    // bimodal profiles; vLLM or llama-server with many slots on a small GPU). Started at its slots, which are
    // also --max-concurrency, it must not hold 256 and queue.
    let mut synth = Synth::new(lanes(32, 1.2));
    synth.noise = 0.05;
    let trace = drive_from(Controller::starting_at(ControllerConfig::default(), Duration::ZERO, 256), &synth, 600.0);
    assert!((24..=40).contains(&trace.final_level), "{} {:?}", trace.final_level, trace.decisions);
    assert!(trace.late_mean <= 48.0, "no needless queueing: mean {}", trace.late_mean);
}

#[test]
fn a_doubling_that_clearly_loses_ends_the_climb() {
    // Past 32 in flight the server thrashes (20% slower): after the gains up to 32, the loss at 64 ends the
    // climb; a second doubling to 128 would only queue twice as much.
    let synth = Synth::new(|level, _, _| if level <= 32 { 1.2 * level as f64 } else { 1.2 * 32.0 * 0.8 });
    let trace = drive(ControllerConfig::default(), &synth, 600.0);
    let highest = trace.levels.iter().map(|(_, l)| *l).max().unwrap();
    assert_eq!(highest, 64, "{:?}", trace.decisions);
    assert!((24..=32).contains(&trace.final_level), "{} {:?}", trace.final_level, trace.decisions);
}

/// Flat from 1 to `top` in flight (the one slot is always busy), 7.6 jobs/s give or take the synth's noise.
fn one_slot(level: usize, _: f64, _: u64) -> f64 {
    // One request in flight leaves the slot idle for the client's round trip; two or more keep it fed.
    if level == 1 {
        7.2
    } else {
        7.6
    }
}

#[test]
fn a_one_slot_server_reporting_busy_1_is_held_at_most_2_and_called_serialized_through_noise() {
    // The test bed's `-np 1 -t 2` on two shared cores: windows move ±15%, three times the fixed band, so noise
    // alone reads as a gain now and then; the server's /slots says one request at a time throughout.
    let mut synth = Synth::new(one_slot).reporting_slots(1);
    synth.noise = 0.15;
    let cfg = ControllerConfig { max: 16, ..Default::default() };
    let trace = drive(cfg, &synth, 300.0);
    assert!(trace.final_level <= 2, "{} {:?}", trace.final_level, trace.decisions);
    assert!(trace.late_mean <= 2.5, "not held above the slot: mean {}", trace.late_mean);
    assert_eq!(trace.notes.len(), 1, "said once: {:?}", trace.notes);
    assert!(trace.notes[0].contains("one request at a time"), "{:?}", trace.notes);
}

#[test]
fn an_8_slot_server_reporting_busy_8_holds_8_when_16_is_within_the_noise() {
    // 16 in flight measures 7% above 8 (the client's round trips hidden, or noise): beyond the fixed band, so
    // without the server's count the climb would go on and the best be 16; the server never ran more than 8,
    // and 7% is not clear of both levels' noise.
    let shape = |level: usize, _: f64, _: u64| 2.0 * level.min(8) as f64 * if level > 8 { 1.07 } else { 1.0 };
    let synth = Synth::new(shape).reporting_slots(8);
    let c = Controller::for_lanes(ControllerConfig::default(), Duration::ZERO, Some(8));
    let trace = drive_from(c, &synth, 300.0);
    assert_eq!(trace.final_level, 8, "{:?}", trace.decisions);
    assert!(trace.notes.is_empty(), "not serialized: {:?}", trace.notes);
    let unguided = drive_from(
        Controller::for_lanes(ControllerConfig::default(), Duration::ZERO, Some(8)),
        &Synth::new(shape),
        300.0,
    );
    assert!(unguided.final_level > 8, "the server's count is what holds 8: {:?}", unguided.decisions);
}

#[test]
fn a_server_reporting_busy_8_may_be_held_above_8_when_more_is_clearly_faster() {
    // Its 8 slots are all it runs, but each doubling to 32 gains 20% (requests queued server-side start the
    // moment a slot frees, hiding the client's round trips): clearly beyond the noise, so the cap gives way.
    let shape = |level: usize, _: f64, _: u64| match level {
        0..=8 => 2.0 * level as f64,
        9..=16 => 16.0 * 1.2,
        _ => 16.0 * 1.44,
    };
    let synth = Synth::new(shape).reporting_slots(8);
    let c = Controller::for_lanes(ControllerConfig::default(), Duration::ZERO, Some(8));
    let trace = drive_from(c, &synth, 300.0);
    assert!((17..=48).contains(&trace.final_level), "{} {:?}", trace.final_level, trace.decisions);
}

#[test]
fn a_one_slot_server_is_called_serialized_by_its_count_when_the_rates_are_not_flat() {
    // A fast one-slot server behind a slow client: at 1 in flight the slot idles through each round trip, so 2
    // in flight runs 1.7× faster and the rates alone do not look flat; /slots still never shows two at once.
    let shape = |level: usize, _: f64, _: u64| if level == 1 { 4.5 } else { 7.6 };
    let mut synth = Synth::new(shape).reporting_slots(1);
    synth.noise = 0.10;
    let trace = drive(ControllerConfig::default(), &synth, 300.0);
    assert!(trace.final_level <= 2, "{} {:?}", trace.final_level, trace.decisions);
    assert_eq!(trace.notes.len(), 1, "said once: {:?}", trace.notes);
    assert!(trace.notes[0].contains("never reported more than one"), "{:?}", trace.notes);
    let mut unguided = Synth::new(shape);
    unguided.noise = 0.10;
    assert!(drive(ControllerConfig::default(), &unguided, 300.0).notes.is_empty(), "without the count: not seen");
}

/// Whether a decision cut the level for faults.
fn cut_for_faults(d: &Decision) -> bool {
    d.reason.contains("faults grow")
}

#[test]
fn a_steady_share_of_faults_is_not_backpressure() {
    // The same 10% of attempts fail at every level (a flaky proxy): the level found is the one found without.
    let clean = drive(ControllerConfig::default(), &Synth::new(lanes(8, 7.0)), 300.0);
    let mut synth = Synth::new(lanes(8, 7.0));
    synth.backpressure = Box::new(|_| 0.10);
    let faulty = drive(ControllerConfig::default(), &synth, 300.0);
    assert!(!faulty.decisions.iter().any(cut_for_faults), "{:?}", faulty.decisions);
    assert_eq!(clean.final_level, 8, "{:?}", clean.decisions);
    assert!(faulty.final_level * 4 >= clean.final_level * 3, "{} vs {}", faulty.final_level, clean.final_level);
    assert!(faulty.late_mean >= 0.75 * clean.late_mean, "{} vs {}", faulty.late_mean, clean.late_mean);
}

#[test]
fn a_steady_share_of_faults_at_a_start_without_a_level_below_is_checked_there_and_kept() {
    let mut synth = Synth::new(lanes(8, 7.0));
    synth.backpressure = Box::new(|_| 0.15);
    let c = Controller::starting_at(ControllerConfig::default(), Duration::ZERO, 8);
    let trace = drive_from(c, &synth, 300.0);
    let check = trace.decisions.iter().position(|d| d.reason.contains("to see whether")).expect("a check below");
    assert_eq!(trace.decisions[check].to, 4, "{:?}", trace.decisions);
    assert!(trace.decisions[check + 1].reason.contains("do not grow"), "{:?}", trace.decisions);
    assert_eq!(trace.decisions[check + 1].to, 8, "{:?}", trace.decisions);
    assert!(!trace.decisions.iter().any(cut_for_faults), "{:?}", trace.decisions);
    assert!(trace.decisions[check + 1].reason.contains("not backpressure"), "{:?}", trace.decisions);
    assert_eq!(trace.notes.len(), 0, "no note: the decision says it: {:?}", trace.notes);
    assert!(trace.final_level >= 6, "{:?}", trace.decisions);
}

#[test]
fn a_bounded_queue_answering_503_past_its_depth_is_backpressure() {
    // A server taking 12 at once and refusing the excess: the share of refusals is 1 - 12/level above 12.
    let mut synth = Synth::new(lanes(12, 7.0));
    synth.backpressure = Box::new(|level| (1.0 - 12.0 / level as f64).max(0.0));
    let trace = drive(ControllerConfig::default(), &synth, 300.0);
    assert!(trace.decisions.iter().any(cut_for_faults), "{:?}", trace.decisions);
    assert!((8..=16).contains(&trace.final_level), "{:?}", trace.decisions);
    assert!(trace.late_mean <= 16.0, "{:?}", trace.decisions);
}

#[test]
fn a_share_of_faults_needs_enough_attempts_and_a_clear_margin_to_count_as_growing() {
    let t = |attempts, faults| Tally { attempts, faults };
    assert!(t(100, 40).clearly_above(t(100, 0)));
    assert!(!t(100, 12).clearly_above(t(100, 10)), "noise of a steady 10%");
    assert!(!t(10, 9).clearly_above(t(100, 0)), "too few attempts to judge");
    assert!(!t(100, 9).clearly_above(t(1000, 0)), "less than 10 points");
    assert!(!t(2000, 900).clearly_above(t(2000, 700)), "45% against 35%: not half as much again");
    assert!(t(2000, 400).clearly_above(t(2000, 100)), "20% against 5%, many attempts");
}

#[test]
fn requests_held_past_three_times_the_longest_answer_count_as_stalled() {
    let mut c = Controller::new(ControllerConfig::default(), Duration::ZERO);
    assert_eq!(c.stall_after(), None, "nothing answered yet");
    let mut now = Duration::ZERO;
    for i in 0..40u64 {
        now += Duration::from_millis(50);
        let latency = Duration::from_millis(if i % 2 == 0 { 100 } else { 200 });
        c.on_sample(now, Sample { tokens: 10, latency, outcome: SampleOutcome::Ok });
        c.tick(now, 1);
    }
    assert_eq!(c.stall_after(), Some(Duration::from_millis(600)));
}

#[test]
fn stalled_requests_get_permits_beside_the_level_up_to_the_level_again_and_the_maximum() {
    let cfg = ControllerConfig { max: 12, ..ControllerConfig::default() };
    let c = Controller::starting_at(cfg, Duration::ZERO, 8);
    assert_eq!(c.permits(0), 8);
    assert_eq!(c.permits(3), 11);
    assert_eq!(c.permits(100), 12, "never past --max-concurrency");
    let c = Controller::starting_at(ControllerConfig::default(), Duration::ZERO, 8);
    assert_eq!(c.permits(100), 16, "at most the level again");
}
