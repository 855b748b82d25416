//! `inflight run` against the simulator's OpenAI-compatible API.

use std::time::{Duration, Instant};

use inflight_sim::SimConfig;
use serde_json::json;

use crate::util::*;

fn mixed_lines() -> Vec<String> {
    vec![
        json!({"id": "p", "prompt": "hello"}).to_string(),
        json!({"id": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        json!({"custom_id": "bc", "method": "POST", "url": "/v1/chat/completions",
               "body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}})
        .to_string(),
        json!({"custom_id": "bt", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Once"}}).to_string(),
        json!({"custom_id": "be", "method": "POST", "url": "/v1/embeddings", "body": {"input": ["a", "b"]}})
            .to_string(),
        json!({"id": "e", "input": "embed me"}).to_string(),
        json!({"prompt": "no id: keyed by line number"}).to_string(),
    ]
}

#[test]
fn every_line_shape_succeeds_in_batch_output_format() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", mixed_lines());
    let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q"]);
    assert_exit(&out, 0);
    let results = read_jsonl(&s.out());
    let by_id =
        |id: &str| results.iter().find(|r| r["custom_id"] == id).unwrap_or_else(|| panic!("{id} missing")).clone();
    assert_eq!(results.len(), 7);
    assert_eq!(by_id("p")["response"]["status_code"], 200);
    assert!(by_id("p")["error"].is_null());
    assert!(by_id("bc")["response"]["body"]["choices"][0]["message"]["content"].is_string());
    assert!(by_id("bt")["response"]["body"]["choices"][0]["text"].is_string());
    assert_eq!(by_id("be")["response"]["body"]["data"].as_array().unwrap().len(), 2);
    assert!(by_id("7")["response"]["body"]["choices"].is_array(), "a line without id gets its line number");
    assert!(read_jsonl(&s.errors()).is_empty());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("7 jobs: 7 done, 0 failed, 0 pending"), "{summary}");
}

#[test]
fn second_run_resumes_and_sends_nothing() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(300));
    let args = ["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q"];
    assert_exit(&run(&args), 0);
    let sent = sim.stats().requests;
    let first = std::fs::read_to_string(s.out()).unwrap();
    assert_exit(&run(&args), 0);
    assert_eq!(sim.stats().requests, sent, "finished jobs are never sent again");
    assert_eq!(std::fs::read_to_string(s.out()).unwrap(), first, "output untouched");
}

#[test]
fn changed_settings_or_input_are_refused_unless_restart() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(20));
    let base = ["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q"];
    let with = |extra: &[&'static str]| -> Vec<String> { base.iter().chain(extra).map(|a| a.to_string()).collect() };
    assert_exit(&run(&with(&["--model", "a"])), 0);

    let refused = run(&with(&["--model", "b"]));
    assert_exit(&refused, 2);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--restart"));
    // Operational flags are not part of the run's identity.
    assert_exit(&run(&with(&["--model", "a", "--concurrency", "3", "--request-timeout", "1m"])), 0);

    s.write_lines("jobs.jsonl", prompt_lines(21));
    let changed = run(&with(&["--model", "a"]));
    assert_exit(&changed, 2);
    assert!(
        String::from_utf8_lossy(&changed.stderr).contains("changed"),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );

    assert_exit(&run(&with(&["--model", "b", "--restart"])), 0);
    let results = read_jsonl(&s.out());
    assert_eq!(results.len(), 21, "rebuilt from the new state, not appended");
    assert!(id_counts(&s.out(), &s.errors()).values().all(|&n| n == 1));
}

#[test]
fn export_and_status_read_the_state() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(50).chain(["{bad".to_string()]));
    let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q"]);
    assert_exit(&out, 1);
    let state = s.path("out.inflight.db");

    let exported = s.path("copy.jsonl");
    let ex = run(&["export", "--state", state.to_str().unwrap(), "-o", exported.to_str().unwrap()]);
    assert_exit(&ex, 0);
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), std::fs::read_to_string(s.out()).unwrap());
    assert_eq!(read_jsonl(&s.path("copy.errors.jsonl")).len(), 1);

    let simple = s.path("simple.jsonl");
    let ex = run(&["export", "--state", state.to_str().unwrap(), "-o", simple.to_str().unwrap(), "--format", "simple"]);
    assert_exit(&ex, 0);
    let first = &read_jsonl(&simple)[0];
    assert!(first["output"].is_string() && first["usage"].is_object() && first["latency_ms"].is_number(), "{first}");

    let st = run(&["status", "--state", state.to_str().unwrap(), "--json"]);
    assert_exit(&st, 1);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["state"], "finished");
    assert_eq!((v["summary"]["done"].as_u64(), v["summary"]["bad_lines"].as_u64()), (Some(50), Some(1)));
}

#[test]
fn run_json_prints_one_summary_object_matching_its_schema() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(50).chain(["{bad".to_string()]));
    let args = ["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q", "-c", "3", "--json"];
    let out = run(&args);
    assert_exit(&out, 1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_matches_schema(&v, "run-summary.schema.json");
    let sum = &v["summary"];
    assert_eq!(sum["jobs"], 50);
    assert_eq!(
        (&sum["done"], &sum["failed"], &sum["pending"], &sum["bad_lines"]),
        (&sum["jobs"], &json!(0), &json!(0), &json!(1))
    );
    assert_eq!(sum["rate_over"], "session");
    assert!(sum["jobs_per_s"].as_f64().unwrap() > 0.0 && sum["wall_s"].as_f64().unwrap() > 0.0, "{sum}");
    assert_eq!(v["concurrency"]["mode"], "fixed");
    assert_eq!(v["concurrency"]["held"], 3);
    assert!(v["workflow"].is_null());
    assert_eq!((&v["exit"]["code"], &v["exit"]["meaning"]), (&json!(1), &json!("some_failed")));
    assert_eq!(v["files"]["results"], s.out_arg());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("50 jobs: 50 done, 0 failed, 0 pending; 1 bad input line"),
        "the text goes to stderr: {text}"
    );

    // Resumed with nothing left to send: the same counts, and the session's rate is zero.
    let again = run(&args);
    assert_exit(&again, 1);
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_matches_schema(&v, "run-summary.schema.json");
    assert_eq!((v["summary"]["done"].as_u64(), v["summary"]["jobs_per_s"].as_f64()), (Some(50), Some(0.0)));
}

#[test]
fn dry_run_renders_templates_and_sends_nothing() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let template = s.path("t.j2");
    std::fs::write(&template, "Extract the factual claims from: {{ segment }}").unwrap();
    let input = s.write_lines("jobs.jsonl", [json!({"id": "a", "segment": "the sky is blue"}).to_string()]);
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "--template",
        template.to_str().unwrap(),
        "--system",
        "Be terse.",
        "--dry-run",
        "--server",
        sim.url(),
    ]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Extract the factual claims from: the sky is blue"), "{stdout}");
    assert!(stdout.contains("Be terse."), "{stdout}");
    assert_eq!(sim.stats().requests, 0);
}

#[test]
fn sigint_drains_exits_130_and_resumes() {
    let sim = Sim::start(SimConfig::profile(inflight_sim::Profile::Lanes4));
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(400));
    let args = [
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
        "4",
    ];
    let mut child =
        bin().args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while whole_lines(&s.out()) < 5 {
        assert!(Instant::now() < deadline, "no results within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    send_signal(child.id(), "INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let partial = read_jsonl(&s.out()).len();
    assert!(partial < 400, "interrupted before the end");
    assert_exit(&run(&args), 0);
    let counts = id_counts(&s.out(), &s.errors());
    assert_eq!(counts.len(), 400);
    assert!(counts.values().all(|&n| n == 1));
}

#[test]
fn jobs_sharing_a_prompt_prefix_are_sent_together_unless_prefix_order_is_off() {
    // 5 documents × 8 questions, the file shuffled so that no two neighbours share a document.
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let lines = (0..40).map(|i| {
        let (doc, q) = (i % 5, i / 5);
        let content = format!("Document {doc}: {}\nQuestion {q}?", "words of the document ".repeat(20));
        json!({"id": format!("d{doc}q{q}"), "messages": [{"role": "user", "content": content}]}).to_string()
    });
    let input = s.write_lines("jobs.jsonl", lines);
    // One in flight: the output's commit order is the order of sending.
    let sent_order = |order: &str, out: &str| {
        let out = s.path(out);
        let args =
            ["run", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--server", sim.url(), "-q", "-c", "1"];
        let res = run(&[&args[..], &["--prefix-order", order]].concat());
        assert_exit(&res, 0);
        let docs: Vec<String> =
            read_jsonl(&out).iter().map(|r| r["custom_id"].as_str().unwrap()[..2].to_owned()).collect();
        assert_eq!(docs.len(), 40);
        docs.windows(2).filter(|w| w[0] != w[1]).count() + 1
    };
    assert_eq!(sent_order("auto", "grouped.jsonl"), 5, "each document's questions sent together");
    assert_eq!(sent_order("off", "file.jsonl"), 40, "file order: the document changes at every job");
}
