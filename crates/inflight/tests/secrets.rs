//! The API key appears nowhere a run writes or prints: not in the state, the outputs, the logs at `-vv`,
//! `status`, `--dry-run`, `--help`, nor the messages of requests the server refused.

use std::path::Path;
use std::process::Output;

use inflight_sim::{Faults, SimConfig};

use crate::util::*;

const KEY: &str = "sk-test-7d3f9a1c-never-shown";
const WRONG_KEY: &str = "sk-wrong-51e0b2-never-shown";

/// Where `secret` occurs in `bytes`, as a count.
fn hits(bytes: &[u8], secret: &str) -> usize {
    bytes.windows(secret.len()).filter(|w| *w == secret.as_bytes()).count()
}

/// Every file under `dir`, recursively, with the secret's count in it.
fn file_hits(dir: &Path, secret: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(file_hits(&path, secret));
        } else {
            found.push((path.display().to_string(), hits(&std::fs::read(&path).unwrap(), secret)));
        }
    }
    found
}

/// Runs `inflight` with `args` and the key in the environment as well, for the flag and its variable alike.
fn run_with_env(args: &[&str], key: &str) -> Output {
    bin().args(args).env("INFLIGHT_API_KEY", key).output().expect("inflight runs")
}

#[track_caller]
fn assert_no_key(what: &str, out: &Output, secret: &str) {
    let n = hits(&out.stdout, secret) + hits(&out.stderr, secret);
    assert_eq!(
        n,
        0,
        "{what} printed the key:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_api_key_is_in_no_file_log_or_message() {
    // Faults, so that retries and failures are logged and recorded too.
    let faults = Faults { error_500: 0.1, reset: 0.05, truncated: 0.05, max_per_request: 1, ..Default::default() };
    let sim = Sim::start(SimConfig::zero_latency().with_api_key(Some(KEY.into())).with_faults(faults).with_seed(3));
    let s = Scratch::new();
    let mut lines: Vec<String> = prompt_lines(60).collect();
    lines.push(r#"{"custom_id": "bad", "url": "/v1/chat/completions", "body": {"messages": "x"}}"#.into());
    let input = s.write_lines("jobs.jsonl", lines);
    let input = input.to_str().unwrap();
    let state = s.path("out.inflight.db");
    let state = state.to_str().unwrap();

    let common = ["-o", s.out_arg(), "--server", sim.url(), "--max-attempts", "3", "-c", "4", "-vv"];
    let out = run_with_env(&[&["run", input, "--api-key", KEY], &common[..]].concat(), KEY);
    assert_exit(&out, 1);
    assert!(sim.stats().ok >= 60, "the key was sent and accepted: {:?}", sim.stats());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEBUG"), "ran at -vv");
    assert_no_key("run -vv", &out, KEY);

    let status = run_with_env(&["status", "--state", state, "-vv"], KEY);
    assert_exit(&status, 1);
    assert_no_key("status", &status, KEY);
    let status_json = run_with_env(&["status", "--state", state, "--json"], KEY);
    assert_no_key("status --json", &status_json, KEY);

    let dry = run_with_env(&["run", input, "--dry-run", "--api-key", KEY, "-vv", "--server", sim.url()], KEY);
    assert_exit(&dry, 1);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("nothing sent"));
    assert_no_key("run --dry-run", &dry, KEY);

    let help = run_with_env(&["run", "--help"], KEY);
    assert_no_key("run --help", &help, KEY);

    // A key the server refuses: the run stops on the server's answer, and no message repeats the key.
    let refused =
        run_with_env(&["run", input, "-o", s.out_arg(), "--server", sim.url(), "--restart", "-vv"], WRONG_KEY);
    assert_exit(&refused, 2);
    assert!(sim.stats().unauthorized > 0, "{:?}", sim.stats());
    assert_no_key("a refused run", &refused, WRONG_KEY);

    let files = file_hits(s.dir.path(), KEY).into_iter().chain(file_hits(s.dir.path(), WRONG_KEY));
    let leaked: Vec<(String, usize)> = files.filter(|(_, n)| *n > 0).collect();
    assert!(leaked.is_empty(), "files hold the key: {leaked:?}");
    assert!(file_hits(s.dir.path(), KEY).len() >= 4, "the state, the outputs and the input were searched");
}
