//! `--concurrency auto` (the default) against simulator profiles with a known answer.

use inflight_sim::{Api, Profile, SimConfig};

use crate::util::*;

fn auto_run(cfg: SimConfig, jobs: usize) -> String {
    let sim = Sim::start(cfg);
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(jobs));
    let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q", "-m", "sim-model"]);
    assert_exit(&out, 0);
    assert_eq!(read_jsonl(&s.out()).len(), jobs);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn serial_server_is_held_at_one_or_two_and_named_with_its_fix() {
    let summary = auto_run(SimConfig::profile(Profile::Serial).with_time_scale(5.0), 600);
    assert!(summary.contains("one request at a time"), "{summary}");
    assert!(summary.contains("--parallel"), "the llama-server fix, since the simulator answers /props: {summary}");
    let held = summary.split("held ").nth(1).and_then(|s| s.split(' ').next()).unwrap_or_default();
    assert!(held == "1" || held == "2", "held {held}: {summary}");
    assert!(summary.contains("effective lanes seen: 1 (the server reports 1 slot)"), "{summary}");
}

#[test]
fn ollama_serial_server_gets_the_ollama_fix() {
    let cfg = SimConfig::profile(Profile::Serial).with_api(Api::Ollama).with_time_scale(5.0);
    let summary = auto_run(cfg, 600);
    assert!(summary.contains("OLLAMA_NUM_PARALLEL"), "{summary}");
}

#[test]
fn four_lanes_are_found() {
    let summary = auto_run(SimConfig::profile(Profile::Lanes4).with_time_scale(5.0), 4000);
    let held: usize = summary.split("held ").nth(1).and_then(|s| s.split(' ').next()).unwrap().parse().unwrap();
    // The simulator, a debug-build client and the other tests share two cores here, so client overhead can make
    // a few more in flight look worth it; what must not happen is stopping short of the lanes or running away.
    assert!((4..=16).contains(&held), "held {held}: {summary}");
    assert!(summary.contains("(the server reports 4 slots)"), "{summary}");
}
