//! One run over several servers: each server at its own level, jobs only where their model is, a server
//! that goes away hands its jobs to the others and rejoins when it is back.

use std::time::{Duration, Instant};

use inflight_sim::{Profile, SimConfig};
use serde_json::{json, Value};

use crate::util::*;

fn summary(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("run --json ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn three_servers_of_different_speeds_each_take_jobs_and_every_job_is_answered_once() {
    let sims = [
        Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(100.0)),
        Sim::start(SimConfig::profile(Profile::Batching32).with_lanes(8).with_time_scale(100.0)),
        Sim::start(SimConfig::profile(Profile::Batching32).with_lanes(16).with_time_scale(200.0)),
    ];
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(3000));
    let mut args = vec!["run", input.to_str().unwrap(), "-o", s.out_arg(), "-q", "--json", "--max-tokens", "16"];
    for sim in &sims {
        args.extend(["--server", sim.url()]);
    }
    let out = run(&args);
    assert_exit(&out, 0);
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 3000);
    assert!(ids.values().all(|&c| c == 1), "every job once");
    let requests: Vec<u64> = sims.iter().map(|s| s.stats().requests).collect();
    assert_eq!(requests.iter().sum::<u64>(), 3000, "no job sent twice: {requests:?}");
    let v = summary(&out);
    let servers = v["servers"].as_array().expect("servers in the summary");
    let done: Vec<u64> = servers.iter().map(|s| s["done"].as_u64().unwrap()).collect();
    println!("per-server answers: {done:?} (simulator counts {requests:?})");
    assert_eq!(done, requests, "the summary counts what each server answered");
    assert!(done.iter().all(|&d| d > 0), "every server took jobs: {done:?}");
    assert!(done[2] > done[0], "the fastest server took more than the slowest: {done:?}");
}

#[test]
fn jobs_go_only_to_servers_that_have_their_model() {
    // Each simulator lists two models and refuses the other server's (404), so a job sent to the wrong one
    // fails. (A llama-server listing one model answers whatever model a request names, so it would take them.)
    let a = Sim::start(
        SimConfig::profile(Profile::Lanes4)
            .with_time_scale(100.0)
            .with_models(vec!["A".into(), "A2".into()])
            .with_missing_models(vec!["B".into()]),
    );
    let b = Sim::start(
        SimConfig::profile(Profile::Lanes4)
            .with_time_scale(100.0)
            .with_models(vec!["B".into(), "B2".into()])
            .with_missing_models(vec!["A".into()]),
    );
    let s = Scratch::new();
    let lines = (0..400).map(|i| {
        let model = if i % 3 == 0 { "B" } else { "A" };
        json!({"id": format!("j{i}"), "model": model, "prompt": format!("say {i}"), "max_tokens": 8}).to_string()
    });
    let input = s.write_lines("jobs.jsonl", lines);
    let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "-q", "--server", a.url(), "--server", b.url()]);
    assert_exit(&out, 0);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.requests, sb.requests), (266, 134), "A's jobs to A, B's to B");
    assert_eq!((sa.not_found, sb.not_found), (0, 0));
    assert_eq!(read_jsonl(&s.out()).len(), 400);

    // A model no server has is refused before anything is sent, naming it and the servers tried.
    let other = s.write_lines("c.jsonl", [json!({"id": "c", "model": "C", "prompt": "x"}).to_string()]);
    let c_out = s.path("c-out.jsonl");
    let out = run(&[
        "run",
        other.to_str().unwrap(),
        "-o",
        c_out.to_str().unwrap(),
        "-q",
        "--server",
        a.url(),
        "--server",
        b.url(),
    ]);
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"C\"") && err.contains(a.url()) && err.contains(b.url()), "{err}");
    assert_eq!(a.stats().requests + b.stats().requests, 400, "nothing sent");
}

#[test]
fn a_server_that_goes_away_hands_its_jobs_to_the_others_and_rejoins_when_back() {
    let cfg = || SimConfig::profile(Profile::Lanes4).with_time_scale(20.0);
    let mut sims = vec![Sim::start(cfg()), Sim::start(cfg()), Sim::start(cfg())];
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(1500));
    let mut args: Vec<String> = ["run", input.to_str().unwrap(), "-o", s.out_arg(), "--json", "--max-tokens", "8"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    // One attempt each: an outage that charged one would fail the job.
    args.extend([
        "--max-attempts".into(),
        "1".into(),
        "-c".into(),
        "8".into(),
        "--status-every".into(),
        "100ms".into(),
    ]);
    for sim in &sims {
        args.extend(["--server".into(), sim.url().to_owned()]);
    }
    let child =
        bin().args(&args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_jsonl(&s.out()).len() < 200 {
        assert!(Instant::now() < deadline, "no results");
        std::thread::sleep(Duration::from_millis(10));
    }
    let port = sims[1].stop();
    let before = read_jsonl(&s.out()).len();
    // The others go on while it is away.
    while read_jsonl(&s.out()).len() < before + 300 {
        assert!(Instant::now() < deadline, "the other servers did not go on");
        std::thread::sleep(Duration::from_millis(10));
    }
    sims[1].restart(cfg().with_port(port));
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert!(read_jsonl(&s.errors()).is_empty(), "no attempt charged for the outage: {:?}", read_jsonl(&s.errors()));
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 1500);
    assert!(ids.values().all(|&c| c == 1), "every job once");
    let v = summary(&out);
    let away = &v["servers"][1];
    println!("the server that went away: {away}");
    assert_eq!(away["outages"].as_u64(), Some(1), "{away}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server unreachable") && stderr.contains("rejoins the run"), "{stderr}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("1 outage"), "the summary names the outage: {text}");
}
