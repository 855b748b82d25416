//! Faults: transient failures are retried to success within the attempts; permanent ones fail at once with
//! the server's message; a run whose first requests all fail the same way stops; an outage pauses the run.

use std::time::{Duration, Instant};

use inflight_sim::{FaultProxy, Faults, Profile, ProxyConfig, ProxyFault, SimConfig};
use serde_json::json;

use crate::util::*;

fn fast() -> SimConfig {
    SimConfig::profile(Profile::Lanes4).with_time_scale(20.0)
}

#[test]
fn transient_faults_are_retried_until_every_job_succeeds() {
    let faults = Faults {
        error_500: 0.02,
        error_503_retry_after: 0.02,
        reset: 0.02,
        stall: 0.02,
        truncated: 0.02,
        max_per_request: 2,
    };
    let sim = Sim::start(fast().with_faults(faults).with_seed(7).with_stall_for(Duration::from_secs(30)));
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(600));
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        sim.url(),
        "-q",
        "--max-tokens",
        "8",
        "-c",
        "16",
        "--request-timeout",
        "2s",
        "--max-attempts",
        "5",
    ]);
    assert_exit(&out, 0);
    let st = sim.stats();
    for (kind, n) in [
        ("500", st.error_500),
        ("503", st.error_503_retry_after),
        ("reset", st.reset),
        ("stall", st.stall),
        ("truncated", st.truncated),
    ] {
        assert!(n > 0, "no {kind} fault was injected: {st:?}");
    }
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 600);
    assert!(ids.values().all(|&n| n == 1));
    assert!(read_jsonl(&s.errors()).is_empty());
    assert!(String::from_utf8_lossy(&out.stdout).contains("attempts retried"));
}

#[test]
fn every_kind_of_proxy_fault_ends_each_job_once_and_a_huge_answer_is_not_read_whole() {
    let sim = Sim::start(SimConfig::zero_latency());
    let mut cfg = ProxyConfig::new(sim.url());
    cfg.burst = 2;
    let mut cfg = cfg.with_mix(0.26);
    cfg.seed = 3;
    cfg.huge_limit = 3;
    cfg.stall_for = Duration::from_secs(30);
    let proxy = sim.rt.block_on(FaultProxy::start(cfg)).expect("the proxy starts");
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(400));
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        &proxy.url(),
        "-q",
        "--request-timeout",
        "2s",
        "--max-attempts",
        "10",
    ]);
    assert_exit(&out, 0);
    let stats = proxy.stats();
    for kind in ProxyFault::ALL {
        assert!(stats.faults.get(kind.name()).is_some_and(|&n| n > 0), "no {} injected: {stats:?}", kind.name());
    }
    assert_eq!(stats.faults["huge"], 3, "{stats:?}");
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 400);
    assert!(ids.values().all(|&n| n == 1), "every job exactly once");
    // A 100 MB answer read whole would be a result line of 100 MB: the cap failed those attempts instead.
    let size = std::fs::metadata(s.out()).unwrap().len();
    assert!(size < 2_000_000, "output of {size} bytes");
}

#[test]
fn a_steady_share_of_faults_at_every_level_is_not_taken_for_backpressure() {
    // The field report: 15% of requests faulted by a proxy whatever the load cut auto to 1 and held it there.
    let sim = Sim::start(fast());
    let mut cfg = ProxyConfig::new(sim.url());
    for kind in [ProxyFault::Error500, ProxyFault::Error503, ProxyFault::ResetBefore, ProxyFault::Garbage] {
        cfg = cfg.with_rate(kind, 0.15 / 4.0);
    }
    cfg.seed = 11;
    let proxy = sim.rt.block_on(FaultProxy::start(cfg)).expect("the proxy starts");
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(1500));
    let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", &proxy.url(), "-q", "--json"]);
    assert_exit(&out, 0);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &summary["concurrency"];
    assert_eq!(c["faults"]["cuts"], 0, "no cut for faults that do not grow with the level: {c}");
    assert!(c["faults"]["failed"].as_u64().unwrap() > 0, "{c}");
    assert!(c["held"].as_u64().unwrap() >= 2, "not decayed to 1: {c}");
    let ids = id_counts(&s.out(), &s.errors());
    assert!(ids.len() == 1500 && ids.values().all(|&n| n == 1));
}

#[test]
fn model_not_found_fails_each_job_after_one_attempt_with_the_servers_message() {
    let sim = Sim::start(fast().with_missing_models(vec!["ghost".into()]));
    let s = Scratch::new();
    let lines = (0..100).map(|i| {
        let model = if i % 5 == 4 { "ghost" } else { "sim-model" };
        json!({"id": format!("j{i}"), "prompt": "hi", "model": model}).to_string()
    });
    let input = s.write_lines("jobs.jsonl", lines);
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        sim.url(),
        "-q",
        "--max-tokens",
        "4",
        "-c",
        "4",
    ]);
    assert_exit(&out, 1);
    let errors = read_jsonl(&s.errors());
    assert_eq!(errors.len(), 20);
    assert_eq!(sim.stats().not_found, 20, "one attempt per job");
    for e in &errors {
        assert_eq!(e["error"]["code"], "not_found");
        assert!(e["error"]["message"].as_str().unwrap().contains("ghost"), "{e}");
        assert_eq!(e["response"]["status_code"], 404);
    }
    assert_eq!(read_jsonl(&s.out()).len(), 80);
}

#[test]
fn first_requests_all_failing_the_same_way_stop_the_run_and_record_nothing() {
    let sim = Sim::start(fast().with_missing_models(vec!["ghost".into()]));
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(1000));
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        sim.url(),
        "-q",
        "--model",
        "ghost",
        "-c",
        "2",
        "--json",
    ]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model 'ghost' not found"), "{stderr}");
    assert!(sim.stats().not_found < 50, "stopped early: {:?}", sim.stats());
    assert!(read_jsonl(&s.errors()).is_empty(), "nothing recorded");
    // The summary still comes out, and says why the run stopped.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_matches_schema(&v, "run-summary.schema.json");
    assert_eq!((&v["exit"]["code"], &v["exit"]["meaning"]), (&serde_json::json!(2), &serde_json::json!("setup_error")));
    assert!(v["exit"]["message"].as_str().unwrap().contains("model 'ghost' not found"), "{v}");
    assert_eq!((v["summary"]["failed"].as_u64(), v["summary"]["pending"].as_u64()), (Some(0), Some(1000)));
}

#[test]
fn outage_pauses_the_run_and_resumes_without_spending_attempts() {
    let mut sim = Sim::start(fast());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(300));
    let state = s.path("out.inflight.db");
    let child = bin()
        .args([
            "run",
            input.to_str().unwrap(),
            "-o",
            s.out_arg(),
            "--server",
            sim.url(),
            "--max-tokens",
            "8",
            "-c",
            "8",
            "--max-attempts",
            "1",
            "--status-every",
            "100ms",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while whole_lines(&s.out()) < 20 {
        assert!(Instant::now() < deadline, "no results");
        std::thread::sleep(Duration::from_millis(10));
    }
    let port = sim.stop();
    // Wait until the run says it is paused (read from its state by `inflight status`).
    loop {
        assert!(Instant::now() < deadline, "the run never paused");
        let st = run(&["status", "--state", state.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
        if v["live"]["paused"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sim.restart(fast().with_port(port));
    let out = child.wait_with_output().unwrap();
    assert!(read_jsonl(&s.errors()).is_empty(), "no attempt was spent on the outage: {:?}", read_jsonl(&s.errors()));
    assert_exit(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PAUSED"), "the status line says so: {stderr}");
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 300);
    assert!(read_jsonl(&s.errors()).is_empty(), "no attempt was spent on the outage");
}
