//! Residency checks: loads, keep-alive, eviction, reloads and the pending bound.

use super::*;

fn params() -> EngineParams {
    EngineParams {
        lanes: 1,
        base_step: 0.01,
        per_request_step: 0.0,
        knee: 1.0,
        prefill_per_token: 0.0,
        warmup_requests: 0,
        warmup_factor: 1.0,
        drift_after: None,
        drift_factor: 1.0,
    }
}

fn req(id: u64, model: &str, keep_alive: KeepAlive) -> Request {
    Request {
        model: model.to_string(),
        opts: RunnerOpts::default(),
        keep_alive,
        job: Job { id, prompt_tokens: 0, output_tokens: 10, stream: false, service: 0.0 },
    }
}

/// Advances to `now` and returns the finished requests as (id, finished, load).
fn run(s: &mut Scheduler, now: f64) -> Vec<(u64, f64, f64)> {
    let mut ev = Vec::new();
    s.advance(now, &mut ev);
    ev.into_iter()
        .filter_map(|e| match e {
            Event::Done(f) => Some((f.id, f.finished, f.load)),
            Event::Token { .. } => None,
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn first_request_pays_the_load_and_keep_alive_zero_unloads() {
    let mut s = Scheduler::residency(params(), 1.0, 3, None);
    s.submit(req(1, "a", KeepAlive::For(300.0)), 0.0).unwrap();
    let done = run(&mut s, 5.0);
    assert!(close(done[0].1, 1.1) && close(done[0].2, 1.0), "{done:?}");
    s.submit(req(2, "a", KeepAlive::For(0.0)), 5.0).unwrap();
    let done = run(&mut s, 6.0);
    assert!(close(done[0].1, 5.1) && close(done[0].2, 0.0), "{done:?}");
    assert!(s.loaded(6.0).is_empty());
    s.submit(req(3, "a", KeepAlive::Forever), 6.0).unwrap();
    assert_eq!(s.loads(), 2);
    run(&mut s, 10.0);
    assert_eq!(s.loaded(10.0), vec![LoadedModel { name: "a".into(), expires_at: None }]);
}

#[test]
fn keep_alive_expires_after_idle_time() {
    let mut s = Scheduler::residency(params(), 0.0, 3, None);
    s.submit(req(1, "a", KeepAlive::For(2.0)), 0.0).unwrap();
    run(&mut s, 1.0);
    assert_eq!(s.loaded(1.0)[0].expires_at, Some(2.1));
    run(&mut s, 2.05);
    assert_eq!(s.loaded(2.05).len(), 1);
    run(&mut s, 2.2);
    assert!(s.loaded(2.2).is_empty());
}

#[test]
fn least_recently_used_idle_model_is_evicted_and_busy_ones_make_requests_wait() {
    let mut s = Scheduler::residency(params(), 1.0, 1, None);
    s.submit(req(1, "a", KeepAlive::Forever), 0.0).unwrap();
    run(&mut s, 0.5);
    // "a" is busy until 1.1, so "b" waits for it, then loads for 1 s.
    s.submit(req(2, "b", KeepAlive::Forever), 0.5).unwrap();
    let done = run(&mut s, 10.0);
    assert_eq!(done.len(), 2);
    assert!(close(done[1].1, 2.2) && close(done[1].2, 1.0), "{done:?}");
    assert_eq!(s.loads(), 2);
    assert_eq!(s.loaded(10.0)[0].name, "b");
}

#[test]
fn changed_runner_options_reload_the_model() {
    let mut s = Scheduler::residency(params(), 1.0, 3, None);
    s.submit(req(1, "a", KeepAlive::Forever), 0.0).unwrap();
    run(&mut s, 5.0);
    let mut r = req(2, "a", KeepAlive::Forever);
    r.opts.num_ctx = Some(8192);
    s.submit(r, 5.0).unwrap();
    let done = run(&mut s, 10.0);
    assert!(close(done[0].1, 6.1) && close(done[0].2, 1.0), "{done:?}");
    assert_eq!(s.loads(), 2);
}

#[test]
fn pending_bound_rejects_beyond_lanes_plus_queue() {
    let mut s = Scheduler::single(params(), Some(3));
    for id in 0..3 {
        s.submit(req(id, "x", KeepAlive::Forever), 0.0).unwrap();
    }
    assert_eq!(s.submit(req(9, "x", KeepAlive::Forever), 0.0), Err(Busy));
    s.cancel(0);
    assert!(s.submit(req(9, "x", KeepAlive::Forever), 0.0).is_ok());
}

#[test]
fn a_request_cancelled_during_its_models_load_does_not_strand_the_next_model() {
    // One slot: b waits for a, whose only request went away while a was loading. The driver only wakes at
    // next_event_at: the end of a's load must be one, or b would wait until some other request arrived.
    let mut s = Scheduler::residency(params(), 1.0, 1, None);
    s.submit(req(1, "a", KeepAlive::Forever), 0.0).unwrap();
    run(&mut s, 0.5);
    s.cancel(1);
    s.submit(req(2, "b", KeepAlive::Forever), 0.5).unwrap();
    let mut finished = Vec::new();
    for _ in 0..100 {
        let Some(at) = s.next_event_at() else { break };
        finished.extend(run(&mut s, at));
    }
    assert_eq!(finished.iter().map(|f| f.0).collect::<Vec<_>>(), vec![2], "b ran: {finished:?}");
    assert!(close(finished[0].1, 2.1), "after a's load ended (1.0) and b's own (1.0): {finished:?}");
}
