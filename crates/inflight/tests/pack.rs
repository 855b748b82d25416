//! Packed embeddings against the simulator's embedding cost profile (6 ms a request + 2 ms an input): lines
//! share requests yet keep their own results, one bad input fails only its line, a server's cap on inputs is
//! learned, and `--inputs-per-request 1` sends a request a line.

use std::collections::HashMap;

use inflight_sim::{Profile, SimConfig};
use serde_json::{json, Value};

use crate::util::*;

/// `n` embedding lines `e0..e{n-1}` with distinct texts.
fn embedding_lines(n: usize) -> Vec<String> {
    (0..n).map(|i| json!({"id": format!("e{i}"), "input": format!("text number {i} to embed")}).to_string()).collect()
}

fn embed_sim() -> Sim {
    Sim::start(SimConfig::profile(Profile::Embed).with_time_scale(20.0))
}

/// Each result's vector by custom_id, checking each body holds exactly one vector, at index 0.
fn vectors(results: &[Value]) -> HashMap<String, Value> {
    results
        .iter()
        .map(|r| {
            let data = r["response"]["body"]["data"].as_array().unwrap_or_else(|| panic!("no data: {r}"));
            assert_eq!(data.len(), 1, "one vector a line: {r}");
            assert_eq!(data[0]["index"], 0, "{r}");
            (r["custom_id"].as_str().unwrap().to_owned(), data[0]["embedding"].clone())
        })
        .collect()
}

/// Runs `input` against `url` with `extra` flags; returns the run's JSON summary.
fn run_json(s: &Scratch, input: &std::path::Path, url: &str, extra: &[&str]) -> (std::process::Output, Value) {
    let mut args = vec!["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", url, "-q", "--json"];
    args.extend_from_slice(extra);
    let out = run(&args);
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, summary)
}

#[test]
fn packed_lines_each_get_the_vector_a_request_of_their_own_gets_in_fewer_requests() {
    let sim = embed_sim();
    let lines = 400;
    let (packed, alone) = (Scratch::new(), Scratch::new());
    let input = packed.write_lines("jobs.jsonl", embedding_lines(lines));
    let (out, summary) = run_json(&packed, &input, sim.url(), &["-c", "64"]);
    assert_exit(&out, 0);
    let requests = sim.stats().requests;
    assert!(requests < lines as u64 / 4, "{requests} requests for {lines} lines: packed");
    let results = read_jsonl(&packed.out());
    let counts = id_counts(&packed.out(), &packed.errors());
    assert_eq!(counts.len(), lines, "every line has a result");
    assert!(counts.values().all(|&n| n == 1), "every line once");
    let mut shared = 0;
    for r in &results {
        let body = &r["response"]["body"];
        // A line that went alone (nothing else was waiting) has the server's answer as it came.
        if let Some(n) = body["x_inflight"]["packed_inputs"].as_u64() {
            assert!(n > 1, "{r}");
            shared += 1;
        }
        assert!(body["usage"]["prompt_tokens"].as_u64().is_some_and(|t| t > 0), "a share of the tokens: {r}");
    }
    assert!(shared > lines * 3 / 4, "{shared} of {lines} lines shared a request");
    let p = &summary["packing"];
    assert_eq!(p["mode"], "auto", "{summary}");
    assert_eq!(p["inputs"].as_u64(), Some(lines as u64), "{summary}");
    assert!(p["largest"].as_u64().unwrap() > 1, "{summary}");
    assert_matches_schema(&summary, "run-summary.schema.json");

    // The same lines one a request: the same vector for every line.
    let input = alone.write_lines("jobs.jsonl", embedding_lines(lines));
    let (out, _) = run_json(&alone, &input, sim.url(), &["--inputs-per-request", "1"]);
    assert_exit(&out, 0);
    let (packed, alone) = (vectors(&results), vectors(&read_jsonl(&alone.out())));
    assert_eq!(packed.len(), lines);
    assert_eq!(packed, alone, "each line's vector is the one its own request gets");
}

#[test]
fn one_input_per_request_sends_a_request_a_line() {
    let sim = embed_sim();
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", embedding_lines(120));
    let (out, summary) = run_json(&s, &input, sim.url(), &["--inputs-per-request", "1", "-c", "8"]);
    assert_exit(&out, 0);
    assert_eq!(sim.stats().requests, 120);
    assert_eq!(sim.stats().embed_inputs, 120);
    assert!(summary["packing"].is_null(), "nothing packed: {summary}");
    for r in read_jsonl(&s.out()) {
        assert!(r["response"]["body"]["x_inflight"].is_null(), "sent as written: {r}");
    }
}

#[test]
fn one_input_over_the_context_fails_only_its_own_line() {
    // Inputs over 64 tokens (256 bytes) are refused whole, with llama-server's 400 for an input over its context.
    let sim = Sim::start(SimConfig::profile(Profile::Embed).with_time_scale(20.0).with_embed_context(Some(64)));
    let s = Scratch::new();
    let mut lines = embedding_lines(300);
    lines[137] = json!({"id": "long", "input": "far too long ".repeat(100)}).to_string();
    let input = s.write_lines("jobs.jsonl", lines);
    let (out, summary) = run_json(&s, &input, sim.url(), &["-c", "64"]);
    assert_exit(&out, 1);
    let errors = read_jsonl(&s.errors());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["custom_id"], "long");
    assert_eq!(errors[0]["error"]["code"], "bad_request", "{}", errors[0]);
    assert!(errors[0]["error"]["message"].as_str().unwrap().contains("context"), "{}", errors[0]);
    let counts = id_counts(&s.out(), &s.errors());
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|&n| n == 1));
    assert_eq!(read_jsonl(&s.out()).len(), 299, "every other line answered");
    assert!(summary["packing"]["splits"].as_u64().unwrap() >= 1, "{summary}");
    assert!(sim.stats().requests < 150, "still packed: {:?}", sim.stats());
}

#[test]
fn a_servers_cap_on_inputs_a_request_is_learned_from_its_413() {
    let sim = Sim::start(SimConfig::profile(Profile::Embed).with_time_scale(20.0).with_embed_max_inputs(Some(8)));
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", embedding_lines(300));
    let (out, summary) = run_json(&s, &input, sim.url(), &["-c", "64"]);
    assert_exit(&out, 0);
    assert_eq!(read_jsonl(&s.out()).len(), 300);
    let p = &summary["packing"];
    let cap = p["server_cap"].as_u64().unwrap_or_else(|| panic!("a cap was learned: {summary}"));
    assert!((1..=8).contains(&cap), "{summary}");
    assert!(p["max"].as_u64().unwrap() <= 8, "{summary}");
    assert!(sim.stats().requests < 300, "still packed below the cap: {:?}", sim.stats());
}
