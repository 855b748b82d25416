//! `--concurrency auto` (the default) against simulator profiles with a known answer.

use inflight_sim::{Api, Profile, SimConfig};
use serde_json::Value;

use crate::util::*;

/// Runs `jobs` jobs with `run --json` and returns the summary's `concurrency` section.
fn auto_run(cfg: SimConfig, jobs: usize) -> Value {
    let sim = Sim::start(cfg);
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(jobs));
    let args = ["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q", "-m", "sim-model"];
    let out = run(&[&args[..], &["--json"]].concat());
    assert_exit(&out, 0);
    assert_eq!(read_jsonl(&s.out()).len(), jobs);
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_matches_schema(&summary, "run-summary.schema.json");
    assert_eq!(summary["concurrency"]["mode"], "auto", "{summary}");
    summary["concurrency"].clone()
}

/// Whether any of auto's notes contains `text`.
fn noted(concurrency: &Value, text: &str) -> bool {
    concurrency["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains(text))
}

#[test]
fn serial_server_is_held_at_one_or_two_and_named_with_its_fix() {
    let c = auto_run(SimConfig::profile(Profile::Serial).with_time_scale(5.0), 600);
    assert!(noted(&c, "one request at a time"), "{c}");
    assert!(noted(&c, "--parallel"), "the llama-server fix, since the simulator answers /props: {c}");
    let held = c["held"].as_u64().unwrap();
    assert!(held == 1 || held == 2, "held {held}: {c}");
    assert_eq!((c["effective_lanes"].as_u64(), c["server_slots"].as_u64()), (Some(1), Some(1)), "{c}");
}

#[test]
fn ollama_serial_server_gets_the_ollama_fix() {
    let cfg = SimConfig::profile(Profile::Serial).with_api(Api::Ollama).with_time_scale(5.0);
    let c = auto_run(cfg, 600);
    assert!(noted(&c, "OLLAMA_NUM_PARALLEL"), "{c}");
}

#[test]
fn four_lanes_are_found() {
    let c = auto_run(SimConfig::profile(Profile::Lanes4).with_time_scale(5.0), 4000);
    let held = c["held"].as_u64().unwrap();
    // The simulator, a debug-build client and the other tests share two cores here, so client overhead can make
    // a few more in flight look worth it; what must not happen is stopping short of the lanes or running away.
    assert!((4..=16).contains(&held), "held {held}: {c}");
    assert_eq!(c["server_slots"].as_u64(), Some(4), "{c}");
}
