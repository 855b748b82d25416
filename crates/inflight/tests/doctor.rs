//! `inflight doctor` end to end: the simulator (a serialized server, Ollama with a short keep_alive, a healthy
//! four-lane server, models competing), a server that does not answer, and the real llama-server from the test
//! bed with oversubscribed threads and with one slot (ignored by a plain `cargo test`; scripts/test.sh runs them).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use inflight_sim::{Api, Profile, SimConfig};
use serde_json::{json, Value};

use crate::real_server::LlamaServer;
use crate::util::*;

/// Settings doctor flags as nonexistent: kept out of the child's environment unless a test sets one.
const FLAGGED: &[&str] =
    &["OLLAMA_NUM_THREAD", "OLLAMA_NUM_THREADS", "OLLAMA_NUM_CTX", "OLLAMA_PARALLEL", "OLLAMA_MAX_MODELS"];

fn doctor(args: &[&str], env: &[(&str, &str)]) -> (Output, Value) {
    let mut cmd = bin();
    cmd.arg("doctor").args(args).arg("--json");
    for k in FLAGGED {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("inflight runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}):\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    let schema_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/doctor-report.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(&report).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{errors:?}\n{report:#}");
    (out, report)
}

fn verdict<'a>(report: &'a Value, kind: &str) -> &'a Value {
    let found = report["verdicts"].as_array().unwrap().iter().find(|v| v["kind"] == kind);
    found.unwrap_or_else(|| panic!("no {kind} verdict in {:#}", report["verdicts"]))
}

fn kinds(report: &Value) -> Vec<&str> {
    report["verdicts"].as_array().unwrap().iter().map(|v| v["kind"].as_str().unwrap()).collect()
}

#[test]
fn a_serialized_server_has_one_effective_lane_and_gets_the_parallel_fix() {
    let sim = Sim::start(SimConfig::profile(Profile::Serial).with_time_scale(2.0));
    let (out, report) = doctor(&["--server", sim.url(), "--probe-time", "4s"], &[]);
    assert_exit(&out, 1);
    assert_eq!(report["server"]["kind"], "llama-server");
    assert_eq!(report["probe"]["effective_lanes"], 1, "{:#}", report["probe"]);
    let v = verdict(&report, "serialized");
    assert!(v["fix"].as_str().unwrap().contains("--parallel 4"), "{v:#}");
    let evidence = v["evidence"].to_string();
    assert!(evidence.contains("lanes: 1 (/props total_slots)") && evidence.contains("8 in flight"), "{evidence}");
    assert_eq!(kinds(&report), ["serialized"]);
}

#[test]
fn ollama_with_keep_alive_zero_reloads_for_every_request_and_gets_the_keep_alive_fix() {
    let cfg = SimConfig::profile(Profile::Lanes4)
        .with_api(Api::Ollama)
        .with_keep_alive(Duration::ZERO)
        .with_load_time(Duration::from_secs(2))
        .with_time_scale(10.0);
    let sim = Sim::start(cfg);
    let (out, report) = doctor(&["--server", sim.url(), "--probe-time", "4s"], &[("OLLAMA_NUM_THREAD", "8")]);
    assert_exit(&out, 1);
    let spaced = &report["probe"]["spaced"]["requests"];
    assert_eq!(spaced.as_array().unwrap().len(), 3);
    let v = verdict(&report, "model_unloads");
    assert!(v["finding"].as_str().unwrap().contains("pays 2.0 s to load it again"), "{v:#}");
    let evidence = v["evidence"].to_string();
    assert!(evidence.contains("2 of 2 requests") && evidence.contains("load_duration 2000 ms"), "{evidence}");
    assert!(evidence.contains("not loaded"), "/api/ps shows the model gone after each answer: {evidence}");
    assert!(v["fix"].as_str().unwrap().starts_with("OLLAMA_KEEP_ALIVE=30m"), "{v:#}");
    let fake = verdict(&report, "nonexistent_setting");
    assert!(fake["finding"].as_str().unwrap().starts_with("OLLAMA_NUM_THREAD does nothing"), "{fake:#}");
}

#[test]
fn ollama_keeping_its_model_loaded_shows_no_reload() {
    let cfg = SimConfig::profile(Profile::Lanes4).with_api(Api::Ollama).with_time_scale(10.0);
    let sim = Sim::start(cfg);
    let (_, report) = doctor(&["--server", sim.url(), "--probe-time", "4s"], &[]);
    assert!(!kinds(&report).contains(&"model_unloads"), "{:#}", report["verdicts"]);
    // The default 5 minutes of keep_alive, in the wall time of a simulator running 10 times fast: 30 s.
    let later = &report["probe"]["spaced"]["requests"][2];
    assert!(later["expires_in_s"].as_f64().unwrap() > 20.0, "{later}");
}

#[test]
fn a_four_lane_server_with_nothing_to_change_exits_zero() {
    let sim = Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(2.0));
    let (out, report) = doctor(&["--server", sim.url(), "--probe-time", "4s"], &[]);
    assert_exit(&out, 0);
    assert_eq!(kinds(&report), Vec::<&str>::new());
    let lanes = report["probe"]["effective_lanes"].as_u64().unwrap();
    assert!((4..=8).contains(&lanes), "four lanes measured as {lanes}");
}

#[test]
fn jobs_naming_more_models_than_ollama_keeps_loaded_compete_without_a_probe() {
    let sim = Sim::start(SimConfig::default().with_api(Api::Ollama));
    let s = Scratch::new();
    let jobs = s.write_lines(
        "jobs.jsonl",
        (0..8).map(|i| json!({"id": i, "model": format!("m{}", i % 4), "prompt": "hello"}).to_string()),
    );
    let (out, report) = doctor(&["--server", sim.url(), "--probe-time", "0", "--jobs", jobs.to_str().unwrap()], &[]);
    assert_exit(&out, 1);
    assert!(report["probe"].is_null());
    assert_eq!(sim.stats().requests, 0, "no request with --probe-time 0");
    let v = verdict(&report, "models_compete");
    assert!(v["fix"].as_str().unwrap().starts_with("OLLAMA_MAX_LOADED_MODELS=4"), "{v:#}");
}

#[test]
fn jobs_are_rendered_through_the_template_and_system_message_as_run_renders_them() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let template = s.path("t.j2");
    std::fs::write(&template, "Say: {{ segment }}").unwrap();
    // Without --template these lines have no prompt, and doctor would find no usable job line.
    let jobs = s.write_lines("jobs.jsonl", (0..4).map(|i| json!({"id": i, "segment": "x".repeat(40)}).to_string()));
    let args = ["--server", sim.url(), "--probe-time", "0", "--jobs", jobs.to_str().unwrap()];
    let templated = [&args[..], &["--template", template.to_str().unwrap(), "--system", "Be terse."]].concat();
    let (out, report) = doctor(&templated, &[]);
    assert!(out.status.code() != Some(2), "{out:?}");
    assert_eq!(report["jobs"]["sampled"], 4, "{:#}", report["jobs"]);
    // "Be terse." (9 characters) + "Say: " and the segment (45): 54 characters, 14 tokens at 4 each.
    assert_eq!(report["jobs"]["prompt_tokens_max"], 14, "{:#}", report["jobs"]);

    let plain = bin().arg("doctor").args(args).output().unwrap();
    assert_exit(&plain, 2);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(
        stderr.contains("line 1 (id \"0\"): missing_field") && stderr.contains("no usable job lines in"),
        "{stderr}"
    );

    let missing = s.path("missing.j2");
    let bad = bin().arg("doctor").args(args).args(["--template", missing.to_str().unwrap()]).output().unwrap();
    assert_exit(&bad, 2);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(&format!("cannot read template {}", missing.display())), "{stderr}");
}

#[test]
fn a_server_that_does_not_answer_is_a_setup_error() {
    let out = run(&["doctor", "--server", "http://127.0.0.1:9", "--probe-time", "1s"]);
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not answer") && !err.contains("panicked"), "{err}");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn real_llama_server_with_four_threads_on_two_cores_is_told_to_use_fewer() {
    let server = LlamaServer::start(&["-np", "4", "-t", "4"]);
    // A few dozen requests at most: the server answers ~1-3 a second like this.
    let (out, report) = doctor(&["--server", &server.url, "--probe-time", "12s", "--output-tokens", "16"], &[]);
    assert_exit(&out, 1);
    let cores = report["host"]["physical_cores"].as_u64().expect("physical cores known on Linux");
    assert!(cores < 4, "this test needs fewer than 4 physical cores to oversubscribe; found {cores}");
    assert_eq!(report["server"]["threads"]["value"], 4);
    assert!(report["server"]["threads"]["source"].as_str().unwrap().contains("command line"));
    let v = verdict(&report, "thread_oversubscription");
    assert_eq!(v["change"], json!({"setting": "-t", "value": cores.to_string()}));
    assert!(v["fix"].as_str().unwrap().ends_with(&format!("-t {cores}")), "{v:#}");
    assert!(v["evidence"].to_string().contains("in flight:"), "probe figures as evidence: {v:#}");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn real_llama_server_with_one_slot_has_one_lane_and_gets_the_parallel_fix() {
    // One thread: a llama.cpp pool as wide as the machine stalls whenever another test takes a core, and this
    // test measures lanes, not threads. Short answers, so each level has several.
    let server = LlamaServer::start(&["-np", "1", "-t", "1"]);
    let (out, report) = doctor(&["--server", &server.url, "--probe-time", "20s", "--output-tokens", "8"], &[]);
    assert_exit(&out, 1);
    assert_eq!(report["probe"]["effective_lanes"], 1, "{:#}", report["probe"]);
    let v = verdict(&report, "serialized");
    assert!(v["fix"].as_str().unwrap().contains("-np 4 -t 1"), "{v:#}");
    assert_eq!(v["change"], json!({"setting": "--parallel", "value": "4"}));
}
