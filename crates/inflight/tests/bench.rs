//! `inflight bench` against the simulator: levels, steady state, the recommendation, and reports that match
//! their schema (JSON) and show both curves with the chosen level marked (SVG).

use inflight_sim::{Faults, Profile, SimConfig};
use serde_json::Value;

use crate::util::*;

#[test]
fn sweep_recommends_the_lanes_and_writes_valid_reports() {
    let sim = Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(5.0));
    let s = Scratch::new();
    let dir = s.path("report");
    let out = run(&[
        "bench",
        "--server",
        sim.url(),
        "--levels",
        "1,2,4,8,16",
        "--min-answers",
        "40",
        "--max-time-per-level",
        "20s",
        "--for-jobs",
        "10k",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("recommended") && table.contains("ETA for 10000 jobs"), "{table}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    assert_matches_schema(&report, "bench-report.schema.json");

    let levels = report["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 5);
    let rate = |l: &Value| l["output_tokens_per_s"].as_f64().unwrap();
    let best = levels.iter().map(rate).fold(0.0, f64::max);
    let chosen = report["recommendation"]["concurrency"].as_u64().unwrap();
    let chosen_rate = levels.iter().find(|l| l["concurrency"] == chosen).map(rate).unwrap();
    assert!(chosen_rate >= 0.95 * best, "recommended {chosen} at {chosen_rate} vs best {best}");
    assert!((4..=8).contains(&chosen), "four lanes: {chosen}");
    assert!(rate(&levels[2]) > 2.5 * rate(&levels[0]), "4 in flight is ~4x 1 in flight on four lanes");

    // Streamed: time to first token and inter-token latency, consistent with the end-to-end latency.
    for l in levels {
        let (ttft, itl, e2e) = (&l["ttft_ms"]["p50"], &l["itl_ms"]["p50"], &l["latency_ms"]["p50"]);
        assert!(ttft.as_f64().unwrap() > 0.0 && ttft.as_f64() <= e2e.as_f64(), "{l}");
        assert!(itl.as_f64().unwrap() > 0.0 && itl.as_f64() < e2e.as_f64(), "{l}");
    }

    let svg = std::fs::read_to_string(dir.join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2, "throughput and latency curves");
    assert!(svg.contains(&format!("recommended: {chosen}")));
    assert_eq!(std::fs::read_to_string(dir.join("bench.csv")).unwrap().lines().count(), 6);
}

#[test]
fn embeddings_sweep_a_batch_size_by_concurrency_matrix() {
    let sim = Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(5.0));
    let s = Scratch::new();
    let jobs = s.write_lines("emb.jsonl", (0..64).map(|i| format!(r#"{{"input": "sentence number {i} to embed"}}"#)));
    let dir = s.path("report");
    let out = run(&[
        "bench",
        "--server",
        sim.url(),
        "--jobs",
        jobs.to_str().unwrap(),
        "--batch-sizes",
        "1,8",
        "--levels",
        "1,4",
        "--min-answers",
        "30",
        "--max-time-per-level",
        "15s",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("batch") && table.contains("inputs per request"), "{table}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    assert_matches_schema(&report, "bench-report.schema.json");
    let cells: Vec<(u64, u64, f64)> = report["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["batch"].as_u64().unwrap(), l["concurrency"].as_u64().unwrap(), l["jobs_per_s"].as_f64().unwrap()))
        .collect();
    let shape: Vec<(u64, u64)> = cells.iter().map(|c| (c.0, c.1)).collect();
    assert_eq!(shape, [(1, 1), (1, 4), (8, 1), (8, 4)], "every cell of the matrix");
    assert!(report["levels"].as_array().unwrap().iter().all(|l| l["output_tokens_per_s"] == 0.0));
    let best = cells.iter().map(|c| c.2).fold(0.0, f64::max);
    let rec = &report["recommendation"];
    let chosen = cells.iter().find(|c| rec["batch"] == c.0 && rec["concurrency"] == c.1).expect("a measured cell");
    assert!(chosen.2 >= 0.95 * best, "recommended {chosen:?}, best {best}");
    assert_eq!(rec["unit"], "jobs/s");
    assert!(sim.stats().requests > 0);
}

#[test]
fn failed_requests_are_counted_by_kind_with_the_servers_message() {
    let faults = Faults { error_500: 0.1, ..Default::default() };
    let sim = Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(5.0).with_faults(faults).with_seed(3));
    let s = Scratch::new();
    let dir = s.path("report");
    let out = run(&[
        "bench",
        "--server",
        sim.url(),
        "--levels",
        "4",
        "--min-answers",
        "40",
        "--max-time-per-level",
        "15s",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    assert_matches_schema(&report, "bench-report.schema.json");
    let level = &report["levels"][0];
    let errors = level["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["kind"], "server_error");
    let failed = errors[0]["count"].as_u64().unwrap();
    // The level's workers stop mid-request at its end, so a 500 the server just sent may go unrecorded.
    let sent = sim.stats().error_500;
    assert!(failed > 0 && failed <= sent && failed + 4 >= sent, "{failed} counted, {sent} sent");
    assert!(level["error_rate"].as_f64().unwrap() > 0.0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("x server_error"));
}

#[test]
fn jobs_lines_over_max_line_bytes_are_reported_as_run_reports_them_and_not_sent() {
    // The long line names a model the simulator refuses: had it been sent, `not_found` would count it.
    let sim = Sim::start(SimConfig::zero_latency().with_missing_models(vec!["ghost".into()]));
    let s = Scratch::new();
    let long = serde_json::json!({"model": "ghost", "prompt": "x".repeat(300)}).to_string();
    let lines = [r#"{"prompt": "short one"}"#.to_string(), long.clone(), r#"{"prompt": "short two"}"#.to_string()];
    let jobs = s.write_lines("jobs.jsonl", lines);
    let dir = s.path("report");
    let out = run(&[
        "bench",
        "--server",
        sim.url(),
        "--jobs",
        jobs.to_str().unwrap(),
        "--max-line-bytes",
        "200",
        "--levels",
        "1",
        "--min-answers",
        "5",
        "--max-time-per-level",
        "5s",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let expected = format!("line 2: line_too_long (line is {} bytes, over --max-line-bytes)", long.len());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&expected), "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    assert!(report["workload"].as_str().unwrap().starts_with("2 jobs sampled"), "{}", report["workload"]);
    let stats = sim.stats();
    assert!(stats.ok > 0 && stats.not_found == 0, "{stats:?}");

    // `run --dry-run` reads the same file with the same cap into the same words.
    let dry = run(&["run", jobs.to_str().unwrap(), "--max-line-bytes", "200", "--dry-run"]);
    assert_exit(&dry, 1);
    assert!(String::from_utf8_lossy(&dry.stdout).lines().any(|l| l == expected), "{dry:?}");
}
