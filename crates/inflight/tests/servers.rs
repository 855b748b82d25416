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
    while whole_lines(&s.out()) < 200 {
        assert!(Instant::now() < deadline, "no results");
        std::thread::sleep(Duration::from_millis(10));
    }
    let port = sims[1].stop();
    let before = whole_lines(&s.out());
    // The others go on while it is away.
    while whole_lines(&s.out()) < before + 300 {
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

/// Lines of a child's stderr as they come, for a test that waits for what the run says.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (bounded) for a stderr line containing `text`; the lines read on the way are kept in `seen`.
fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, text: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no {text:?} on stderr: {seen:#?}"));
        let found = line.contains(text);
        seen.push(line);
        if found {
            return;
        }
    }
}

/// Writes `text` to `path` at once (a rename), as an editor saving the file would.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_server_added_to_the_servers_file_joins_the_run_and_one_removed_takes_no_new_jobs() {
    let cfg = || SimConfig::profile(Profile::Lanes4).with_time_scale(20.0);
    let sims = [Sim::start(cfg()), Sim::start(cfg()), Sim::start(cfg()), Sim::start(cfg())];
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(6000));
    let file = s.path("servers.txt");
    let listed = |which: &[usize]| {
        let urls: Vec<&str> = which.iter().map(|&i| sims[i].url()).collect();
        format!("# the run's servers\n{}\n", urls.join("\n"))
    };
    replace_file(&file, &listed(&[0, 1, 2]));
    let mut child = bin()
        .args(["run", input.to_str().unwrap(), "-o", s.out_arg(), "--json", "--max-tokens", "8", "-c", "8"])
        .args(["--servers-file", file.to_str().unwrap(), "--status-every", "1h"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while whole_lines(&s.out()) < 200 {
        assert!(Instant::now() < deadline, "no results");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sims[3].stats().requests, 0, "not in the file yet");

    // A fourth server added to the file takes jobs while the run goes.
    let added = Instant::now();
    replace_file(&file, &listed(&[0, 1, 2, 3]));
    while sims[3].stats().requests == 0 {
        assert!(Instant::now() < deadline, "the added server took no job");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("the added server's first request came {:?} after the file was saved", added.elapsed());
    wait_for_line(&rx, "joins the run (servers file)", &mut seen);
    // `status --json` shows every server of the running run, the added one included.
    let state = s.path("out.inflight.db");
    loop {
        let st = run(&["status", "--state", state.to_str().unwrap(), "--json"]);
        let v: Value = serde_json::from_slice(&st.stdout).unwrap();
        let servers = v["live"]["servers"].as_array().cloned().unwrap_or_default();
        if servers.len() == 4 {
            assert_eq!(servers[3]["url"], sims[3].url(), "{v}");
            assert!(servers.iter().all(|s| s["limit"].as_u64() == Some(8) && s["done"].is_u64()), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "status never showed the four servers: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The first one, removed from the file, takes no new jobs; the others go on.
    replace_file(&file, &listed(&[1, 2, 3]));
    wait_for_line(&rx, "left the servers file", &mut seen);
    let removed_at = sims[0].stats().requests;
    let results_at = whole_lines(&s.out());
    // Enough is left to send for a server still taking jobs to get dozens of them (a quarter of what is left).
    assert!(results_at <= 5700, "the run is still going ({results_at} of 6000 done)");
    seen.extend(rx.iter());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{seen:#?}");
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 6000);
    assert!(ids.values().all(|&c| c == 1), "every job once");
    let requests: Vec<u64> = sims.iter().map(|s| s.stats().requests).collect();
    println!("requests per server: {requests:?}; the removed one had {removed_at} when it left");
    assert_eq!(requests.iter().sum::<u64>(), 6000, "no job sent twice: {requests:?}");
    // Jobs that had their permit on it when it left may still have gone to it (at most its level, 8).
    assert!(requests[0] <= removed_at + 8, "the removed server kept taking jobs: {requests:?}");
    let v = summary(&out);
    let servers = v["servers"].as_array().expect("servers in the summary");
    assert_eq!(servers.len(), 4, "the added server is in the summary: {v}");
    assert!(servers[3]["done"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn a_servers_file_where_no_server_answers_is_refused_before_anything_runs() {
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(5));
    let file = s.path("servers.txt");
    std::fs::write(&file, "http://127.0.0.1:9\n").unwrap();
    let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--servers-file", file.to_str().unwrap()]);
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("servers.txt") && err.contains("127.0.0.1:9"), "{err}");
    assert!(!s.out().exists(), "nothing written");
}

#[test]
fn a_server_that_refuses_every_request_is_set_aside_and_the_others_take_its_jobs() {
    // Both list model "m"; the broken one refuses it (404) whatever the request.
    let good = Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(100.0).with_models(vec!["m".into()]));
    let broken = || {
        SimConfig::profile(Profile::Lanes4)
            .with_time_scale(100.0)
            .with_models(vec!["m".into()])
            .with_missing_models(vec!["m".into()])
    };
    let bad = Sim::start(broken());
    let s = Scratch::new();
    let lines =
        (0..300).map(|i| json!({"id": format!("j{i}"), "model": "m", "prompt": format!("say {i}")}).to_string());
    let input = s.write_lines("jobs.jsonl", lines);
    let mut args = vec!["run", input.to_str().unwrap(), "-o", s.out_arg(), "-q", "--json", "--max-tokens", "8"];
    args.extend(["--max-attempts", "1", "-c", "4", "--server", bad.url(), "--server", good.url()]);
    let out = run(&args);
    assert_exit(&out, 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("server {} set aside", bad.url())), "{err}");
    assert!(read_jsonl(&s.errors()).is_empty(), "no job failed for the broken server: {:?}", read_jsonl(&s.errors()));
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 300);
    assert!(ids.values().all(|&c| c == 1), "every job once");
    println!("the broken server refused {} requests", bad.stats().not_found);
    // Ten refusals set it aside; besides those, only requests that held one of its 4 permits around that moment
    // (in flight, or taken while the tenth answer was being judged) reached it. Without the rule it would get
    // about half of the 300.
    assert!(bad.stats().not_found <= 10 + 2 * 4, "it stopped getting jobs once set aside: {}", bad.stats().not_found);
    assert_eq!(good.stats().requests, 300);

    // When every server refuses everything, the run stops with exit 2 and the message, recording nothing.
    let worse = Sim::start(broken());
    let s2 = Scratch::new();
    let input =
        s2.write_lines("jobs.jsonl", (0..50).map(|i| json!({"model": "m", "prompt": format!("{i}")}).to_string()));
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s2.out_arg(),
        "-q",
        "--server",
        bad.url(),
        "--server",
        worse.url(),
    ]);
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no server is usable") && err.contains(bad.url()) && err.contains(worse.url()), "{err}");
    assert!(read_jsonl(&s2.out()).is_empty() && read_jsonl(&s2.errors()).is_empty(), "nothing recorded");
}
