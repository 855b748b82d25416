//! `inflight bench` against the simulator: levels, steady state, the recommendation, and reports that match
//! their schema (JSON) and show both curves with the chosen level marked (SVG).

use std::path::PathBuf;

use inflight_sim::{Profile, SimConfig};
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
    let schema_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/bench-report.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&report).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");

    let levels = report["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 5);
    let rate = |l: &Value| l["output_tokens_per_s"].as_f64().unwrap();
    let best = levels.iter().map(rate).fold(0.0, f64::max);
    let chosen = report["recommendation"]["concurrency"].as_u64().unwrap();
    let chosen_rate = levels.iter().find(|l| l["concurrency"] == chosen).map(rate).unwrap();
    assert!(chosen_rate >= 0.95 * best, "recommended {chosen} at {chosen_rate} vs best {best}");
    assert!((4..=8).contains(&chosen), "four lanes: {chosen}");
    assert!(rate(&levels[2]) > 3.0 * rate(&levels[0]), "4 in flight is ~4x 1 in flight on four lanes");

    let svg = std::fs::read_to_string(dir.join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2, "throughput and latency curves");
    assert!(svg.contains(&format!("recommended: {chosen}")));
    assert_eq!(std::fs::read_to_string(dir.join("bench.csv")).unwrap().lines().count(), 6);
}
