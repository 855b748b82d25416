//! Real llama-server from the test bed (`scripts/testbed.sh`): chat, raw completion and embedding jobs.
//! Ignored by a plain `cargo test` because it needs the test bed; `scripts/test.sh` runs it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use serde_json::json;

use crate::util::*;

/// One real server at a time: on a 2-core machine two at once would slow each other, and measure each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A turn on the machine for a test that runs a real model (a server or the engine).
pub fn turn() -> MutexGuard<'static, ()> {
    // A test that failed while holding the lock leaves nothing behind that matters: its server is killed.
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The test bed's model file (`scripts/testbed.sh setup`, cached after the first call).
#[cfg_attr(not(feature = "engine"), allow(dead_code, reason = "the engine tests use it"))]
pub fn testbed_model() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/testbed.sh");
    let out = Command::new("bash").arg(script).arg("setup").output().expect("testbed.sh runs");
    assert!(out.status.success(), "testbed.sh setup failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(line.split_whitespace().nth(1).expect("SERVER MODEL"))
}

/// A llama-server started by the test bed, killed on drop.
pub struct LlamaServer {
    pub url: String,
    pid: u32,
    #[cfg_attr(not(feature = "engine"), allow(dead_code, reason = "the engine tests use it"))]
    turn: Option<MutexGuard<'static, ()>>,
}

impl LlamaServer {
    pub fn start(args: &[&str]) -> LlamaServer {
        LlamaServer::start_mode("start", args)
    }

    /// `mode` is `start` (one model) or `router` (two model copies, one loaded at a time).
    pub fn start_mode(mode: &str, args: &[&str]) -> LlamaServer {
        let turn = turn();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/testbed.sh");
        let out = Command::new("bash").arg(script).arg(mode).args(args).output().expect("testbed.sh runs");
        assert!(out.status.success(), "testbed.sh start failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        let (url, pid) = line.trim().split_once(' ').expect("URL PID");
        LlamaServer { url: url.to_owned(), pid: pid.parse().unwrap(), turn: Some(turn) }
    }

    /// Stops the server but keeps the machine's turn (for a test that goes on with the engine).
    #[cfg_attr(not(feature = "engine"), allow(dead_code, reason = "the engine tests use it"))]
    pub fn stop(mut self) -> MutexGuard<'static, ()> {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        self.pid = 0;
        self.turn.take().expect("held until dropped")
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        if self.pid != 0 {
            let _ = Command::new("kill").arg(self.pid.to_string()).status();
        }
    }
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn workflow_on_a_router_holding_one_model_with_a_json_schema_on_step_1() {
    let server = LlamaServer::start_mode("router", &["-np", "4", "-t", "2", "-c", "8192"]);
    let s = Scratch::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let flow = std::fs::read_to_string(root.join("examples/claims-flow.yaml")).unwrap();
    // Step 1 answers JSON under llama-server's constrained decoding (response_format with the schema).
    let schema = "    output: json\n    schema: {type: object, required: [claims], properties: {claims: {type: array, \
                  maxItems: 1, items: {type: string, maxLength: 40}}}}\n  critique:";
    let flow = flow.replacen(
        "    max_tokens: 32\n    temperature: 0\n  critique:",
        &format!("    max_tokens: 128\n    temperature: 0\n{schema}"),
        1,
    );
    assert!(flow.contains("output: json"));
    std::fs::write(s.path("flow.yaml"), flow).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(root.join("examples/segments.jsonl"))
        .unwrap()
        .lines()
        .take(24)
        .map(str::to_owned)
        .collect();
    let input = s.write_lines("jobs.jsonl", lines);
    let flow = s.path("flow.yaml");
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "--workflow",
        flow.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        &server.url,
        "-q",
    ]);
    assert_exit(&out, 0);
    let results = read_jsonl(&s.out());
    assert_eq!(results.len(), 24);
    let ids: std::collections::HashSet<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 24, "every job once");
    for r in &results {
        assert!(r["steps"]["extract"]["output"]["claims"].is_array(), "step 1 is valid JSON: {r}");
        assert!(r["steps"]["critique"]["output"].is_string() && r["steps"]["judge"]["output"].is_string());
    }
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("model switches"), "{summary}");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn chat_completion_and_embedding_jobs_against_llama_server() {
    let server = LlamaServer::start(&["-np", "4", "-t", "2", "-c", "4096", "--embeddings", "--pooling", "mean"]);
    let s = Scratch::new();
    let mut lines: Vec<String> = (0..24)
        .map(|i| {
            json!({"id": format!("chat{i}"), "prompt": format!("Name one fact about the number {i}.")}).to_string()
        })
        .collect();
    lines.extend((0..8).map(|i| {
        json!({"custom_id": format!("raw{i}"), "method": "POST", "url": "/v1/completions",
               "body": {"prompt": format!("Once upon a time, {i}"), "max_tokens": 8}})
        .to_string()
    }));
    lines.extend((0..8).map(|i| json!({"id": format!("emb{i}"), "input": format!("text number {i}")}).to_string()));
    let input = s.write_lines("jobs.jsonl", lines);
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        &server.url,
        "-q",
        "--max-tokens",
        "24",
        "-c",
        "4",
    ]);
    assert_exit(&out, 0);
    let results = read_jsonl(&s.out());
    assert_eq!(results.len(), 40);
    for r in &results {
        let id = r["custom_id"].as_str().unwrap();
        let body = &r["response"]["body"];
        match &id[..3] {
            "cha" => assert!(!body["choices"][0]["message"]["content"].as_str().unwrap().is_empty(), "{r}"),
            "raw" => assert!(body["choices"][0]["text"].is_string(), "{r}"),
            _ => assert!(body["data"][0]["embedding"].as_array().unwrap().len() > 100, "{id}"),
        }
    }
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("40 jobs: 40 done"), "{summary}");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn packed_embeddings_fail_only_the_line_over_the_context() {
    // 4 slots of 256 tokens (-c 1024), a physical batch that takes any of them (-ub 1024): a ~600-token input is
    // over a slot's context, which llama-server refuses with 400 for the whole request that carries it.
    let server = LlamaServer::start(&[
        "-np",
        "4",
        "-t",
        "2",
        "-c",
        "1024",
        "-b",
        "1024",
        "-ub",
        "1024",
        "--embeddings",
        "--pooling",
        "mean",
    ]);
    let s = Scratch::new();
    let mut lines: Vec<String> = (0..96)
        .map(|i| json!({"id": format!("e{i}"), "input": format!("a short text, number {i}")}).to_string())
        .collect();
    lines[41] = json!({"id": "long", "input": "many words over the context ".repeat(120)}).to_string();
    let input = s.write_lines("jobs.jsonl", lines);
    let out =
        run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", &server.url, "-q", "--json", "-c", "32"]);
    assert_exit(&out, 1);
    let errors = read_jsonl(&s.errors());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["custom_id"], "long", "{}", errors[0]);
    let results = read_jsonl(&s.out());
    assert_eq!(results.len(), 95, "every other line answered");
    for r in &results {
        assert_eq!(r["response"]["body"]["data"].as_array().map(Vec::len), Some(1), "{r}");
        assert!(r["response"]["body"]["data"][0]["embedding"].as_array().unwrap().len() > 100, "{r}");
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["packing"]["largest"].as_u64().unwrap() > 1, "packed: {summary}");
    assert!(summary["packing"]["splits"].as_u64().unwrap() >= 1, "{summary}");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn embeddings_without_the_flag_fail_permanently_with_the_servers_message() {
    let server = LlamaServer::start(&["-np", "2", "-t", "2", "-c", "2048"]);
    let s = Scratch::new();
    let mut lines: Vec<String> = (0..4).map(|i| json!({"id": format!("c{i}"), "prompt": "Hi"}).to_string()).collect();
    lines.extend((0..3).map(|i| json!({"id": format!("e{i}"), "input": "x"}).to_string()));
    let input = s.write_lines("jobs.jsonl", lines);
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        &server.url,
        "-q",
        "--max-tokens",
        "8",
        "-c",
        "1",
    ]);
    assert_exit(&out, 1);
    let errors = read_jsonl(&s.errors());
    assert_eq!(errors.len(), 3);
    for e in &errors {
        assert_eq!(e["response"]["status_code"], 501, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("--embeddings"), "{e}");
    }
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn bench_streams_and_reads_the_servers_own_figures() {
    let server = LlamaServer::start(&["-np", "2", "-t", "2", "--metrics"]);
    let s = Scratch::new();
    let dir = s.path("report");
    let out = run(&[
        "bench",
        "--server",
        &server.url,
        "--levels",
        "1,2",
        "--output-tokens",
        "16",
        "--min-answers",
        "12",
        "--max-time-per-level",
        "20s",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    assert_matches_schema(&report, "bench-report.schema.json");
    for l in report["levels"].as_array().unwrap() {
        assert_eq!(l["errors"], json!([]), "no failed requests: {l}");
        let ttft = l["ttft_ms"]["p50"].as_f64().expect("time to first token from the stream");
        assert!(ttft > 0.0 && ttft <= l["latency_ms"]["p50"].as_f64().unwrap(), "{l}");
        assert!(l["itl_ms"]["p50"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["server"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "llama-server timings: {l}");
        let load = &l["server"]["load"];
        assert!(load["samples"].as_u64().unwrap() >= 2, "/metrics sampled: {l}");
        assert!(load["running_mean"].as_f64().unwrap() > 0.0, "requests seen running: {l}");
    }
}

/// Runs 40 chat jobs over `servers` (`--server` each, plus `extra`); checks every job once, that each server
/// answered some (the summary's count equal to `sim`'s own where a simulator is one of them), and that every
/// line has one shape whoever answered it.
pub fn one_run_over_two_backends(servers: &[&str], extra: &[&str], sim: Option<(usize, &Sim)>) {
    let s = Scratch::new();
    let lines = (0..40).map(|i| json!({"id": format!("j{i}"), "prompt": format!("Name a colour number {i}.")}));
    let input = s.write_lines("jobs.jsonl", lines.map(|l| l.to_string()));
    let mut args = vec!["run", input.to_str().unwrap(), "-o", s.out_arg(), "-q", "--json", "--max-tokens", "8"];
    args.extend(["-c", "4"]);
    for url in servers {
        args.extend(["--server", url]);
    }
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_exit(&out, 0);
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 40);
    assert!(ids.values().all(|&c| c == 1), "every job once");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let done: Vec<u64> =
        v["servers"].as_array().expect("servers").iter().map(|s| s["done"].as_u64().unwrap()).collect();
    println!("answered per server: {done:?}");
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|&d| d > 0), "both answered jobs: {done:?}");
    if let Some((i, sim)) = sim {
        assert_eq!(done[i], sim.stats().requests, "the summary counts what the simulator answered");
    }
    let records = read_jsonl(&s.out());
    let shape = chat_line_shape(&records[0]);
    assert!(shape.iter().all(|(_, kind)| *kind != "absent"), "{shape:?}");
    for r in &records {
        assert_matches_schema(r, "batch-output.schema.json");
        assert_eq!(chat_line_shape(r), shape, "one shape whoever answered: {r}");
    }
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn llama_server_and_the_simulator_in_one_run_both_answer_in_one_shape() {
    let server = LlamaServer::start(&["-np", "4", "-t", "2"]);
    let sim = Sim::start(inflight_sim::SimConfig::profile(inflight_sim::Profile::Lanes4).with_time_scale(2.0));
    one_run_over_two_backends(&[&server.url, sim.url()], &[], Some((1, &sim)));
}
