//! The embedded engine (`--engine MODEL.gguf`) on the test bed's model: real llama.cpp decoding in-process.
//! Answers equal llama-server's at temperature 0, embeddings match its, and the engine's own duties (the
//! context check, the shared prefix, errors before anything runs, kill -9 and resume) hold. Ignored by a plain
//! `cargo test` because it needs the test bed; `scripts/test.sh` runs it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::real_server::{testbed_model, turn, LlamaServer};
use crate::util::*;

const TOPICS: [&str; 20] = [
    "the sea",
    "a red apple",
    "winter mornings",
    "old trains",
    "a small dog",
    "the moon",
    "city parks",
    "rainy days",
    "honey bees",
    "mountain lakes",
    "a paper boat",
    "fresh bread",
    "the desert",
    "a quiet library",
    "autumn leaves",
    "a lighthouse",
    "summer storms",
    "a violin",
    "green tea",
    "the night sky",
];

fn chat_lines() -> Vec<String> {
    TOPICS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": format!("q{i}"), "messages": [{"role": "user", "content": format!("Write one sentence about {t}.")}],
                   "max_tokens": 32, "temperature": 0})
            .to_string()
        })
        .collect()
}

/// id -> the answer's body.
fn answers(s: &Scratch) -> HashMap<String, Value> {
    read_jsonl(&s.out())
        .into_iter()
        .map(|r| (r["custom_id"].as_str().unwrap().to_owned(), r["response"]["body"].clone()))
        .collect()
}

fn engine_run(s: &Scratch, input: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let model = testbed_model();
    let mut args =
        vec!["run", input.to_str().unwrap(), "-o", s.out_arg(), "--engine", model.to_str().unwrap(), "-q", "--json"];
    args.extend_from_slice(extra);
    run(&args)
}

fn summary_json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("run --json prints JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn at_temperature_0_the_engine_answers_as_llama_server_does_alone_and_among_16_sequences() {
    let server = LlamaServer::start(&["-np", "1", "-t", "2", "-c", "4096"]);
    let reference = Scratch::new();
    let input = reference.write_lines("jobs.jsonl", chat_lines());
    let out =
        run(&["run", input.to_str().unwrap(), "-o", reference.out_arg(), "--server", &server.url, "-q", "-c", "1"]);
    assert_exit(&out, 0);
    let _turn = server.stop();
    let expected = answers(&reference);
    assert_eq!(expected.len(), 20);

    for (level, sequences) in [("1", "1"), ("16", "16")] {
        let s = Scratch::new();
        let out = engine_run(&s, &input, &["-c", level, "--engine-sequences", sequences]);
        assert_exit(&out, 0);
        let report = summary_json(&out);
        assert_matches_schema(&report, "run-summary.schema.json");
        if level == "16" {
            assert!(
                report["engine"]["max_batch_sequences"].as_u64().unwrap() > 1,
                "sequences decoded together: {report}"
            );
        }
        for (id, want) in &expected {
            let got = &answers(&s)[id];
            let text = |b: &Value| b["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
            assert_eq!(text(got), text(want), "{id} at -c {level}: the engine's answer differs from llama-server's");
            assert_eq!(
                got["usage"]["prompt_tokens"], want["usage"]["prompt_tokens"],
                "{id}: same chat template and tokens"
            );
            assert_eq!(got["usage"]["completion_tokens"], want["usage"]["completion_tokens"], "{id}");
            assert_eq!(got["choices"][0]["finish_reason"], want["choices"][0]["finish_reason"], "{id}");
        }
    }
}

fn cosine(a: &[Value], b: &[Value]) -> f64 {
    let (a, b): (Vec<f64>, Vec<f64>) =
        (a.iter().map(|x| x.as_f64().unwrap()).collect(), b.iter().map(|x| x.as_f64().unwrap()).collect());
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(&a) * norm(&b))
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn embeddings_match_llama_servers_mean_pooling() {
    // The reference is llama-server answering one request at a time: with several embedding requests at once,
    // the test-bed server's answers for some texts came out different from its own one-at-a-time answers
    // (cosine ~0.72 for 4 of these 20 at -c 4), while the engine, packing all of them into one decode call,
    // still matches the one-at-a-time answers.
    let server = LlamaServer::start(&["-np", "4", "-t", "2", "-c", "4096", "--embeddings", "--pooling", "mean"]);
    let reference = Scratch::new();
    let lines: Vec<String> = TOPICS
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": format!("e{i}"), "input": format!("A note about {t}.")}).to_string())
        .collect();
    let input = reference.write_lines("jobs.jsonl", lines);
    assert_exit(
        &run(&["run", input.to_str().unwrap(), "-o", reference.out_arg(), "--server", &server.url, "-q", "-c", "1"]),
        0,
    );
    let _turn = server.stop();
    let s = Scratch::new();
    let out = engine_run(&s, &input, &["--pooling", "mean", "-c", "16"]);
    assert_exit(&out, 0);
    assert!(summary_json(&out)["engine"]["embed_tokens"].as_u64().unwrap() > 0);
    let (want, got) = (answers(&reference), answers(&s));
    assert_eq!(got.len(), 20);
    for (id, w) in &want {
        let c =
            cosine(got[id]["data"][0]["embedding"].as_array().unwrap(), w["data"][0]["embedding"].as_array().unwrap());
        assert!(c >= 0.999, "{id}: cosine {c:.5} to llama-server's embedding");
    }
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn a_job_longer_than_the_context_is_one_error_record_with_the_numbers() {
    let _turn = turn();
    let s = Scratch::new();
    let mut lines: Vec<String> = (0..5)
        .map(|i| json!({"id": format!("ok{i}"), "prompt": format!("Say {i}."), "max_tokens": 8}).to_string())
        .collect();
    lines.push(json!({"id": "long", "prompt": "word ".repeat(400), "max_tokens": 8}).to_string());
    let input = s.write_lines("jobs.jsonl", lines);
    let out = engine_run(&s, &input, &["--engine-context", "256"]);
    assert_exit(&out, 1);
    assert_eq!(read_jsonl(&s.out()).len(), 5, "the other jobs finish");
    let errors = read_jsonl(&s.errors());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e["custom_id"], "long");
    assert_eq!(e["error"]["code"], "context_length_exceeded", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_tokens 8") && message.contains("holds 256"), "the numbers: {message}");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn a_missing_or_corrupt_model_or_a_model_that_cannot_pool_stops_before_anything_runs() {
    let _turn = turn();
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", [json!({"id": "e", "input": "x"}).to_string()]);
    let missing = s.path("nope.gguf");
    std::fs::write(s.path("bad.gguf"), b"this is not a model").unwrap();
    let model = testbed_model();
    let cases: [(&str, &std::path::Path, &str); 3] = [
        ("missing", &missing, "no such file"),
        ("corrupt", &s.path("bad.gguf"), "not a usable GGUF"),
        ("no pooling", &model, "--pooling mean"),
    ];
    for (what, path, says) in cases {
        let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--engine", path.to_str().unwrap(), "-q"]);
        assert_exit(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line, no loader log: {err}");
        assert!(read_jsonl(&s.out()).is_empty() && read_jsonl(&s.errors()).is_empty(), "{what}: nothing ran");
    }
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn a_shared_preamble_is_prefilled_once() {
    let _turn = turn();
    let s = Scratch::new();
    // A 300-token preamble (the same word repeated: one token each), then each job's own question.
    let preamble = format!("Read the rules.{}", " apple".repeat(300));
    let n = 40;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"id": format!("p{i}"), "messages": [{"role": "system", "content": preamble},
                        {"role": "user", "content": format!("Question {i}: what is {i} plus {i}?")}], "max_tokens": 4})
            .to_string()
        })
        .collect();
    let input = s.write_lines("jobs.jsonl", lines);
    let out = engine_run(&s, &input, &["-c", "8"]);
    assert_exit(&out, 0);
    let e = summary_json(&out)["engine"].clone();
    let prefix = e["prefix_tokens"].as_u64().unwrap();
    assert!(prefix >= 300, "the preamble was found as the shared prefix: {e}");
    let prompts: u64 = answers(&s).values().map(|b| b["usage"]["prompt_tokens"].as_u64().unwrap()).sum();
    let own = prompts - n * prefix;
    let computed = e["prefill_tokens"].as_u64().unwrap();
    let bound = 1.2 * (prefix + own) as f64;
    println!(
        "prefill computed {computed}, preamble once + own {} (bound {bound:.0}), without sharing {prompts}",
        prefix + own
    );
    assert!((computed as f64) <= bound, "computed {computed} > 1.2 x (preamble {prefix} + own {own}): {e}");
    // 40 jobs on 8 sequences: a job on a sequence that ran one before keeps the preamble's cells it holds.
    let kept = e["kept_tokens"].as_u64().unwrap();
    println!("kept from a sequence's previous job: {kept}, copied from the prefix: {}", e["prefix_saved_tokens"]);
    assert!(kept >= prefix, "no job kept its sequence's cells: {e}");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn kill_9_during_an_engine_run_then_resume_gives_every_job_once_and_decodes_no_finished_job_again() {
    let _turn = turn();
    let s = Scratch::new();
    let n = 48;
    let lines: Vec<String> = (0..n)
        .map(|i| json!({"id": format!("k{i}"), "prompt": format!("Count from {i}."), "max_tokens": 24}).to_string())
        .collect();
    let input = s.write_lines("jobs.jsonl", lines);
    let model = testbed_model();
    let args =
        ["run", input.to_str().unwrap(), "-o", s.out_arg(), "--engine", model.to_str().unwrap(), "-q", "-c", "4"];
    let mut child =
        bin().args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while whole_lines(&s.out()) < 8 && child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run was still going when killed");
    send_signal(child.id(), "KILL");
    child.wait().unwrap();
    let state = s.path("out.inflight.db");
    let st: Value =
        serde_json::from_slice(&run(&["status", "--state", state.to_str().unwrap(), "--json"]).stdout).unwrap();
    let done_before = st["summary"]["done"].as_u64().unwrap();
    assert!(done_before >= 8 && done_before < n, "killed mid-way: {done_before} done");

    let mut resumed = args.to_vec();
    resumed.push("--json");
    let out = run(&resumed);
    assert_exit(&out, 0);
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), n as usize);
    assert!(ids.values().all(|&c| c == 1), "every job exactly once: {ids:?}");
    let e = summary_json(&out)["engine"].clone();
    assert_eq!(e["jobs"].as_u64().unwrap(), n - done_before, "only the unfinished jobs were decoded again: {e}");
}

/// Three steps over two GGUF files (a, then b, then a), as a workflow names them.
const TWO_MODEL_FLOW: &str = "steps:
  facts:
    model: a.gguf
    template: 'Name one fact about {{ topic }}.'
    max_tokens: 16
    temperature: 0
  critique:
    model: b.gguf
    template: 'Is this true? {{ steps.facts.output }}'
    max_tokens: 16
    temperature: 0
  verdict:
    model: a.gguf
    template: 'Say yes or no: {{ steps.critique.output }}'
    max_tokens: 8
    temperature: 0
";

/// Runs [`TWO_MODEL_FLOW`] over 20 topics on the engine with `extra` flags; checks every job's three steps
/// came once; returns the run's stderr (its log at -v).
fn two_model_workflow(extra: &[&str]) -> String {
    let s = Scratch::new();
    // Two files (the test bed has one model: both are its weights, under two names, so they load apart).
    let model = testbed_model();
    for name in ["a.gguf", "b.gguf"] {
        std::fs::copy(&model, s.path(name)).unwrap();
    }
    let flow = s.path("flow.yaml");
    std::fs::write(&flow, TWO_MODEL_FLOW).unwrap();
    let input = s.write_lines(
        "jobs.jsonl",
        TOPICS.iter().enumerate().map(|(i, t)| json!({"id": format!("t{i}"), "topic": t}).to_string()),
    );
    let mut args = vec!["run", input.to_str().unwrap(), "--workflow", flow.to_str().unwrap(), "-o", s.out_arg(), "-v"];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_exit(&out, 0);
    let lines = read_jsonl(&s.out());
    let ids: std::collections::HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!((lines.len(), ids.len()), (20, 20), "every job once");
    for l in &lines {
        for step in ["facts", "critique", "verdict"] {
            assert!(l["steps"][step]["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{step} of {l}");
        }
    }
    let summary = String::from_utf8_lossy(&out.stdout);
    for step in ["facts", "critique", "verdict"] {
        assert!(summary.contains(&format!("step {step}: 20 done, 0 failed")), "{summary}");
    }
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How many times the engine loaded a model (its log at -v).
fn loads_in(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" loading a model")).count()
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn a_three_step_workflow_over_two_gguf_files_runs_every_step_once_on_the_engine() {
    let _turn = turn();
    // Memory for both: each model is loaded once, at the start.
    let log = two_model_workflow(&["--engine-sequences", "8"]);
    assert_eq!(loads_in(&log), 2, "both models stay loaded:\n{log}");
    // Memory for one (98 MB of weights each, with a useful cache for one): the models load in turn, a load is
    // a model switch, and the answers are the same whole set.
    let log = two_model_workflow(&["--engine-sequences", "8", "--engine-memory", "400M"]);
    let loads = loads_in(&log);
    assert!(loads >= 3, "a, b, then a again: {loads} loads\n{log}");
    assert!(log.contains("unloading a model to make room"), "{log}");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn the_engine_beside_a_server_is_one_more_server_of_the_run() {
    let _turn = turn();
    let model = testbed_model();
    let sim = Sim::start(inflight_sim::SimConfig::profile(inflight_sim::Profile::Lanes4).with_time_scale(2.0));
    let engine = ["--engine", model.to_str().unwrap()];
    crate::real_server::one_run_over_two_backends(&[sim.url()], &engine, Some((1, &sim)));
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn the_engine_is_a_worker_of_a_run_shared_through_postgresql() {
    let _turn = turn();
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", chat_lines());
    let state = crate::shared_run::state_url("engine");
    let out = engine_run(&s, &input, &["--state", &state]);
    assert_exit(&out, 0);
    let v = summary_json(&out);
    assert!(v["engine"]["sequences"].as_u64().is_some_and(|n| n > 0), "the engine was sized: {v}");
    let export = s.path("export.jsonl");
    assert_exit(&run(&["export", "--state", &state, "-o", export.to_str().unwrap()]), 0);
    let exported = read_jsonl(&export);
    assert_eq!(exported.len(), TOPICS.len(), "every job answered once");
    assert_eq!(std::fs::read(&export).unwrap(), std::fs::read(s.out()).unwrap(), "the -o copy equals the export");
    assert!(answers(&s)
        .values()
        .all(|b| b["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty())));
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn bench_on_the_engine_sweeps_sequences_for_each_thread_count_and_names_the_fastest() {
    let _turn = turn();
    let s = Scratch::new();
    let dir = s.path("report");
    let model = testbed_model();
    let args = ["bench", "--engine", model.to_str().unwrap(), "--levels", "1,4", "--output-tokens", "8"];
    let limits = ["--prompt-tokens", "16", "--min-answers", "6", "--max-time-per-level", "15s"];
    let limits = [&limits[..], &["--report-dir", dir.to_str().unwrap()]].concat();
    let out = run(&[&args[..], &limits[..]].concat());
    assert_exit(&out, 0);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    assert_matches_schema(&report, "bench-report.schema.json");
    let levels = report["levels"].as_array().unwrap();
    let rows: Vec<(u64, u64)> =
        levels.iter().map(|l| (l["threads"].as_u64().unwrap(), l["concurrency"].as_u64().unwrap())).collect();
    let cores = rows.iter().map(|r| r.0).max().unwrap();
    println!("rows (threads, sequences): {rows:?}; {}", report["recommendation"]["why"]);
    // Each thread count from 1 to the physical cores (never more), each with both levels.
    let want: Vec<(u64, u64)> = (1..=cores).flat_map(|t| [(t, 1), (t, 4)]).collect();
    assert_eq!(rows, want);
    let physical = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |c| c.matches("processor").count() as u64);
    assert!(physical == 0 || cores <= physical, "{cores} threads on {physical} logical cores");
    // The recommendation names the thread count of the fastest row, and the table shows the column.
    let rec = &report["recommendation"];
    let chosen = rec["threads"].as_u64().unwrap();
    let rate = |t: u64| {
        levels
            .iter()
            .filter(|l| l["threads"] == t)
            .map(|l| l["output_tokens_per_s"].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    assert!((1..=cores).all(|t| rate(chosen) >= 0.95 * rate(t)), "threads {chosen} is not the fastest row");
    assert!(rec["why"].as_str().unwrap().contains(&format!("--engine-threads {chosen}")), "{rec}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("threads"), "the table has a threads column");
}
