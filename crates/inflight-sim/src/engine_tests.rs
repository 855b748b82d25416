//! Arithmetic checks of the batching model: each test has a closed-form answer.

use super::*;

fn params(lanes: usize, knee: f64, base: f64, per_request: f64, prefill: f64) -> EngineParams {
    EngineParams {
        lanes,
        base_step: base,
        per_request_step: per_request,
        knee,
        prefill_per_token: prefill,
        warmup_requests: 0,
        warmup_factor: 1.0,
        drift_after: None,
        drift_factor: 1.0,
    }
}

fn job(id: u64, prompt: u32, out: u32) -> Job {
    Job { id, prompt_tokens: prompt, output_tokens: out, stream: false, service: 0.0 }
}

/// Keeps `concurrency` jobs in flight until `total` finished; returns the jobs
/// per simulated second over the first half of the completions (the tail,
/// where the loop stops refilling, is not steady state) and every record.
fn closed_loop(p: EngineParams, concurrency: usize, total: u64) -> (f64, Vec<Finished>) {
    let mut e = Engine::new(p, 0.0);
    let mut next_id = 0;
    for _ in 0..concurrency {
        e.submit(job(next_id, 32, 64), 0.0);
        next_id += 1;
    }
    let mut done = Vec::new();
    let mut events = Vec::new();
    while (done.len() as u64) < total {
        let at = e.next_event_at().expect("work remains");
        e.advance(at, &mut events);
        for ev in events.drain(..) {
            if let Event::Done(f) = ev {
                if next_id < total {
                    e.submit(job(next_id, 32, 64), f.finished);
                    next_id += 1;
                }
                done.push(f);
            }
        }
    }
    let mut times: Vec<f64> = done.iter().map(|f| f.finished).collect();
    times.sort_by(f64::total_cmp);
    let half = times.len() / 2;
    (half as f64 / times[half - 1], done)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

#[test]
fn step_time_is_flat_below_the_knee_and_linear_above() {
    let p = params(256, 32.0, 0.008, 0.0, 0.0);
    assert_eq!(p.step_time(1), 0.008);
    assert_eq!(p.step_time(32), 0.008);
    assert!(close(p.step_time(64), 0.016, 1e-12));
    assert!(close(p.step_time(128), 0.032, 1e-12));
    let p = params(256, 32.0, 0.008, 0.0001, 0.0);
    assert!(close(p.step_time(10), 0.009, 1e-12));
}

#[test]
fn serial_throughput_does_not_depend_on_concurrency() {
    let p = params(1, 1.0, 0.002, 0.0, 0.0001);
    let per_job = 32.0 * 0.0001 + 64.0 * 0.002;
    for c in [1, 2, 8, 32] {
        let (tp, _) = closed_loop(p.clone(), c, 200);
        assert!(close(tp, 1.0 / per_job, 1e-9), "c={c}: {tp}");
    }
}

#[test]
fn four_lanes_are_four_times_serial_at_four_or_more_in_flight() {
    let serial = params(1, 1.0, 0.002, 0.0, 0.0);
    let lanes4 = params(4, 4.0, 0.002, 0.0, 0.0);
    let (base, _) = closed_loop(serial, 1, 100);
    let (two, _) = closed_loop(lanes4.clone(), 2, 400);
    assert!(close(two, 2.0 * base, 1e-9), "{two} vs {base}");
    let (four, _) = closed_loop(lanes4.clone(), 4, 400);
    assert!(close(four, 4.0 * base, 1e-9), "{four} vs {base}");
    // Beyond the lanes a replacement that arrives just as a step ends waits
    // for the next one, which costs a little against the ideal.
    for c in [5, 16] {
        let (tp, _) = closed_loop(lanes4.clone(), c, 400);
        assert!(close(tp, 4.0 * base, 0.01), "c={c}: {tp} vs {base}");
    }
}

#[test]
fn throughput_rises_to_the_knee_then_stays_flat() {
    let p = params(256, 32.0, 0.008, 0.0001, 0.0);
    let tp = |c| closed_loop(p.clone(), c, 2048).0;
    let (t8, t16, t32, t64, t128) = (tp(8), tp(16), tp(32), tp(64), tp(128));
    assert!(t8 < t16 && t16 < t32, "{t8} {t16} {t32}");
    assert!(close(t64, t32, 0.02) && close(t128, t32, 0.02), "{t32} {t64} {t128}");
    let peak_tokens_per_s = 1.0 / (0.008 / 32.0 + 0.0001);
    assert!(close(t32 * 64.0, peak_tokens_per_s, 1e-6));
}

fn finish_times(events: &[Event]) -> Vec<f64> {
    let mut t: Vec<f64> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Done(f) => Some(f.finished),
            Event::Token { .. } => None,
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

#[test]
fn advancing_in_tiny_increments_matches_one_big_jump() {
    let p = params(4, 4.0, 0.002, 0.0, 0.0001);
    let load = |e: &mut Engine| {
        for id in 0..30 {
            e.submit(job(id, 32, 64), 0.0);
        }
    };
    let mut fine = Engine::new(p.clone(), 0.0);
    load(&mut fine);
    let (mut fine_events, mut now) = (Vec::new(), 0.0);
    while fine.pending() > 0 {
        now += 0.000_37;
        fine.advance(now, &mut fine_events);
    }
    let mut coarse = Engine::new(p, 0.0);
    load(&mut coarse);
    let mut coarse_events = Vec::new();
    coarse.advance(1e9, &mut coarse_events);
    let (a, b) = (finish_times(&fine_events), finish_times(&coarse_events));
    assert_eq!(a.len(), 30);
    assert!(a.iter().zip(&b).all(|(x, y)| close(*x, *y, 1e-12)), "{a:?} vs {b:?}");
}

#[test]
fn streaming_jobs_report_every_token_and_zero_length_jobs_finish_after_one_step() {
    let mut e = Engine::new(params(2, 2.0, 0.01, 0.0, 0.0), 0.0);
    e.submit(Job { stream: true, ..job(1, 0, 3) }, 0.0);
    e.submit(job(2, 0, 0), 0.0);
    let mut ev = Vec::new();
    e.advance(1.0, &mut ev);
    let tokens: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Token { id: 1, index } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, vec![0, 1, 2]);
    let done: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Done(f) => Some((f.id, f.tokens, f.finished)),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 2);
    assert!(done.contains(&(2, 0, 0.01)));
    assert!(done.iter().any(|&(id, n, t)| id == 1 && n == 3 && close(t, 0.03, 1e-12)));
    assert!(e.is_idle());
}

#[test]
fn loading_delays_the_first_step_and_is_reported() {
    let mut e = Engine::loading(params(1, 1.0, 0.01, 0.0, 0.0), 0.0, 0.5);
    let mut ev = Vec::new();
    e.advance(0.1, &mut ev);
    e.submit(job(1, 0, 1), 0.1);
    assert_eq!(e.next_event_at(), Some(0.5));
    e.advance(10.0, &mut ev);
    let Some(Event::Done(f)) = ev.pop() else {
        panic!("no completion: {ev:?}");
    };
    assert!(close(f.load, 0.4, 1e-12) && close(f.finished, 0.51, 1e-12), "{f:?}");
}

#[test]
fn reload_waits_for_running_requests_then_blocks_the_queue() {
    let mut e = Engine::new(params(2, 2.0, 0.01, 0.0, 0.0), 0.0);
    let mut ev = Vec::new();
    e.submit(job(1, 0, 10), 0.0);
    e.advance(0.0, &mut ev);
    e.request_reload(1.0, 0.0);
    e.submit(job(2, 0, 1), 0.0);
    e.advance(100.0, &mut ev);
    let finished: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Done(f) => Some((f.id, f.finished, f.load)),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 2);
    assert!(close(finished[0].1, 0.1, 1e-12));
    assert_eq!(finished[1].0, 2);
    assert!(close(finished[1].1, 1.11, 1e-12) && close(finished[1].2, 1.0, 1e-12));
}

#[test]
fn warmup_and_drift_slow_steps_down() {
    let mut p = params(1, 1.0, 0.01, 0.0, 0.0);
    p.warmup_requests = 1;
    p.warmup_factor = 5.0;
    let (_, done) = closed_loop(p.clone(), 1, 2);
    let first = done[0].finished - done[0].admitted;
    let second = done[1].finished - done[1].admitted;
    assert!(close(first, 5.0 * second, 1e-9), "{first} vs {second}");

    p.warmup_requests = 0;
    p.drift_after = Some(0.64 * 10.0);
    p.drift_factor = 1.3;
    let (_, done) = closed_loop(p, 1, 20);
    let early = done[0].finished - done[0].admitted;
    let late = done[19].finished - done[19].admitted;
    assert!(close(late, 1.3 * early, 1e-9), "{early} vs {late}");
}

#[test]
fn cancel_frees_a_lane_for_the_queue() {
    let mut e = Engine::new(params(1, 1.0, 0.01, 0.0, 0.0), 0.0);
    let mut ev = Vec::new();
    e.submit(job(1, 0, 100), 0.0);
    e.submit(job(2, 0, 1), 0.0);
    e.advance(0.05, &mut ev);
    assert!(e.cancel(1));
    assert!(!e.cancel(1));
    e.advance(10.0, &mut ev);
    let Some(Event::Done(f)) = ev.pop() else {
        panic!("no completion");
    };
    assert_eq!(f.id, 2);
    assert!(close(f.finished, 0.07, 1e-12), "{f:?}");
}

#[test]
fn service_time_is_paid_once_at_admission_one_request_at_a_time() {
    // The `embed` profile: no decode cost, 6 ms + 2 ms an input paid when a request is admitted.
    let mut e = Engine::new(params(1, 1.0, 0.0, 0.0, 0.0), 0.0);
    e.submit(Job { service: 0.006 + 4.0 * 0.002, ..job(1, 0, 0) }, 0.0);
    e.submit(Job { service: 0.006 + 0.002, ..job(2, 0, 0) }, 0.0);
    let mut events = Vec::new();
    while let Some(at) = e.next_event_at() {
        e.advance(at, &mut events);
    }
    let finished: Vec<(u64, f64)> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Done(f) => Some((f.id, f.finished)),
            Event::Token { .. } => None,
        })
        .collect();
    assert_eq!(finished.len(), 2);
    assert!(finished[0].0 == 1 && close(finished[0].1, 0.014, 1e-9), "{finished:?}");
    assert!(finished[1].0 == 2 && close(finished[1].1, 0.022, 1e-9), "{finished:?}");
}
