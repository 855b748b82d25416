//! The response cache across runs: a rerun after an edit sends only the edited lines; runs of other files and
//! new states answer identical requests from it; two runs at once share it without corrupting it.

use inflight_sim::{Profile, SimConfig};
use serde_json::{json, Value};

use crate::util::*;

/// `n` deterministic chat lines; the lines in `edited` ask something else.
fn lines(n: usize, edited: &[usize]) -> Vec<String> {
    (0..n)
        .map(|i| {
            let q = if edited.contains(&i) { format!("what is {i} squared?") } else { format!("what is {i}?") };
            json!({"custom_id": format!("j{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "m", "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 8}})
            .to_string()
        })
        .collect()
}

/// A run with the cache on at `cache`; its `--json` summary.
fn cached_run(input: &std::path::Path, out: &str, cache: &std::path::Path, sim: &Sim, extra: &[&str]) -> Value {
    let args = ["run", input.to_str().unwrap(), "-o", out, "--server", sim.url(), "-q", "--json"];
    let out = run(&[&args[..], &["--cache", "deterministic", "--cache-path", cache.to_str().unwrap()], extra].concat());
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).expect("run --json")
}

#[test]
fn a_rerun_after_editing_some_lines_sends_only_those_and_keeps_every_result() {
    let sim = Sim::start(SimConfig::profile(Profile::Batching32).with_time_scale(200.0));
    let s = Scratch::new();
    let cache = s.path("responses.db");
    let input = s.write_lines("jobs.jsonl", lines(2000, &[]));
    let first = cached_run(&input, s.out_arg(), &cache, &sim, &[]);
    assert_eq!(sim.stats().requests, 2000);
    assert_eq!((first["cache"]["hits"].as_u64(), first["cache"]["stored"].as_u64()), (Some(0), Some(2000)));

    // 20 lines edited: the changed run is refused without --restart, as before ...
    let edited: Vec<usize> = (0..20).map(|i| i * 97).collect();
    std::fs::write(&input, lines(2000, &edited).join("\n") + "\n").unwrap();
    let args = ["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q"];
    assert_exit(&run(&[&args[..], &["--cache", "deterministic", "--cache-path", cache.to_str().unwrap()]].concat()), 2);
    // ... and with it only the 20 edited requests reach the server.
    let rerun = cached_run(&input, s.out_arg(), &cache, &sim, &["--restart"]);
    assert_eq!(sim.stats().requests, 2020, "exactly the edited lines were sent");
    assert_eq!((rerun["cache"]["hits"].as_u64(), rerun["cache"]["stored"].as_u64()), (Some(1980), Some(20)));
    let results = read_jsonl(&s.out());
    assert_eq!(results.len(), 2000, "every result, cached or not");
    let ids: std::collections::HashSet<&str> = results.iter().map(|r| r["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2000);
    assert!(results.iter().all(|r| r["response"]["status_code"] == 200 && r["response"]["body"]["choices"].is_array()));

    // Another state (a new output) answers everything from the cache; the cache off sends everything.
    let other = s.path("other.jsonl");
    let third = cached_run(&input, other.to_str().unwrap(), &cache, &sim, &[]);
    assert_eq!((third["cache"]["hits"].as_u64(), sim.stats().requests), (Some(2000), 2020));
    let off = s.path("off.jsonl");
    let out =
        run(&["run", input.to_str().unwrap(), "-o", off.to_str().unwrap(), "--server", sim.url(), "-q", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(sim.stats().requests, 4020, "INFLIGHT_CACHE=off (the tests' default) sends every job");
}

#[test]
fn sampled_requests_are_not_cached_by_default() {
    let sim = Sim::start(SimConfig::profile(Profile::Batching32).with_time_scale(200.0));
    let s = Scratch::new();
    let cache = s.path("responses.db");
    let input = s.write_lines("jobs.jsonl", prompt_lines(50));
    cached_run(&input, s.out_arg(), &cache, &sim, &[]);
    let again = s.path("again.jsonl");
    let second = cached_run(&input, again.to_str().unwrap(), &cache, &sim, &["--temperature", "0.8"]);
    assert_eq!(sim.stats().requests, 100, "no temperature, then 0.8: nothing is deterministic, nothing cached");
    assert_eq!(second["cache"]["hits"].as_u64(), Some(0));
}

#[test]
fn two_runs_at_once_share_the_cache_without_corrupting_it() {
    let sim = Sim::start(SimConfig::profile(Profile::Batching32).with_time_scale(50.0));
    let s = Scratch::new();
    let cache = s.path("responses.db");
    let all = lines(1500, &[]);
    // Overlapping halves: lines 0..1000 and 500..1500.
    let a = s.write_lines("a.jsonl", all[..1000].to_vec());
    let b = s.write_lines("b.jsonl", all[500..].to_vec());
    let spawn = |input: &std::path::Path, out: &str| {
        bin()
            .args(["run", input.to_str().unwrap(), "-o", out, "--server", sim.url(), "-q"])
            .args(["--cache", "deterministic", "--cache-path", cache.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (out_a, out_b) = (s.path("a-out.jsonl"), s.path("b-out.jsonl"));
    let mut first = spawn(&a, out_a.to_str().unwrap());
    let mut second = spawn(&b, out_b.to_str().unwrap());
    assert!(first.wait().unwrap().success() && second.wait().unwrap().success());
    for (out, range) in [(&out_a, 0..1000), (&out_b, 500..1500)] {
        let ids: std::collections::HashSet<String> =
            read_jsonl(out).iter().map(|r| r["custom_id"].as_str().unwrap().to_owned()).collect();
        let want: std::collections::HashSet<String> = range.map(|i| format!("j{i}")).collect();
        assert_eq!(ids, want, "{} has every one of its jobs once", out.display());
    }
    let stats = run(&["cache", "stats", "--json", "--cache-path", cache.to_str().unwrap()]);
    assert_exit(&stats, 0);
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    println!("cache after two runs at once: {stats}");
    assert_eq!(stats["integrity"], "ok");
    assert_eq!(stats["entries"].as_u64(), Some(1500), "one answer per distinct request");
    let pruned = run(&["cache", "prune", "--older-than", "0s", "--cache-path", cache.to_str().unwrap()]);
    assert_exit(&pruned, 0);
    assert!(String::from_utf8_lossy(&pruned.stdout).contains("removed 1500 answers"), "{pruned:?}");
}
