//! The Ollama API, against the simulator's Ollama-compatible mode (Ollama itself cannot be installed here).

use inflight_sim::{Api, Profile, SimConfig};
use serde_json::json;

use crate::util::*;

fn ollama() -> SimConfig {
    SimConfig::profile(Profile::Lanes4).with_api(Api::Ollama).with_time_scale(20.0)
}

#[test]
fn chat_generate_and_embed_through_ollama_without_reloading_the_model() {
    let sim = Sim::start(ollama());
    let s = Scratch::new();
    let mut lines: Vec<String> = (0..30).map(|i| json!({"id": format!("c{i}"), "prompt": "hi"}).to_string()).collect();
    // A line asking for other runner options must not make Ollama reload the model.
    lines.push(json!({"id": "ctx", "prompt": "hi", "num_ctx": 512}).to_string());
    lines.push(
        json!({"custom_id": "g", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Once"}}).to_string(),
    );
    lines.push(json!({"id": "e", "input": ["a", "b"]}).to_string());
    let input = s.write_lines("jobs.jsonl", lines);
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        sim.url(),
        "-q",
        "--model",
        "sim-model",
        "--max-tokens",
        "8",
        "--param",
        "num_ctx=2048",
        "-c",
        "4",
    ]);
    assert_exit(&out, 0);
    let results = read_jsonl(&s.out());
    assert_eq!(results.len(), 33);
    let by_id = |id: &str| results.iter().find(|r| r["custom_id"] == id).unwrap()["response"]["body"].clone();
    assert!(by_id("c0")["choices"][0]["message"]["content"].is_string());
    assert!(by_id("c0")["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(by_id("c0")["x_ollama"]["load_duration"].is_number(), "Ollama's timings are kept");
    assert!(by_id("g")["choices"][0]["text"].is_string());
    assert_eq!(by_id("e")["data"].as_array().unwrap().len(), 2);
    assert_eq!(sim.stats().model_loads, 1, "one load for the whole run: {:?}", sim.stats());
}

#[test]
fn detects_ollama_and_refuses_a_model_it_does_not_have() {
    let sim = Sim::start(ollama());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(5));
    let out =
        run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q", "--model", "llama9"]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ollama pull llama9"), "{stderr}");
    assert_eq!(sim.stats().requests, 0);
}
