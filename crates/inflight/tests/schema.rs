//! The output records validate against the JSON Schemas committed in docs/schema/, in both formats.

use std::path::PathBuf;

use inflight_sim::SimConfig;
use serde_json::{json, Value};

use crate::util::*;

fn schema(name: &str) -> jsonschema::Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema").join(name);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"))
}

#[track_caller]
fn validate_all(validator: &jsonschema::Validator, lines: &[Value], what: &str) {
    assert!(!lines.is_empty(), "no {what} lines to validate");
    for line in lines {
        let errors: Vec<String> = validator.iter_errors(line).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{what} line {line} violates its schema: {errors:?}");
    }
}

#[test]
fn output_lines_match_their_schemas_in_both_formats() {
    let sim = Sim::start(SimConfig::zero_latency().with_missing_models(vec!["ghost".into()]));
    let s = Scratch::new();
    let mut lines: Vec<String> = prompt_lines(20).collect();
    lines.push(json!({"id": "emb", "input": "x"}).to_string());
    lines.push(json!({"id": "missing", "prompt": "x", "model": "ghost"}).to_string());
    lines.push("{not json".into());
    let input = s.write_lines("jobs.jsonl", lines);
    let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q", "-c", "1"]);
    assert_exit(&out, 1);
    validate_all(&schema("batch-output.schema.json"), &read_jsonl(&s.out()), "batch result");
    let errors = read_jsonl(&s.errors());
    assert_eq!(errors.len(), 2);
    validate_all(&schema("batch-error.schema.json"), &errors, "batch error");

    let simple = s.path("simple.jsonl");
    let state = s.path("out.inflight.db");
    let ex = run(&["export", "--state", state.to_str().unwrap(), "-o", simple.to_str().unwrap(), "--format", "simple"]);
    assert_exit(&ex, 0);
    validate_all(&schema("simple-output.schema.json"), &read_jsonl(&simple), "simple result");
    validate_all(&schema("simple-error.schema.json"), &read_jsonl(&s.path("simple.errors.jsonl")), "simple error");
}

#[test]
fn workflow_lines_match_their_schemas_also_when_exported() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let mut lines: Vec<String> =
        (0..5).map(|i| json!({"id": format!("w{i}"), "text": "t", "extra": i}).to_string()).collect();
    lines.push(json!({"id": "no-extra", "text": "t"}).to_string());
    lines.push("{not json".into());
    let input = s.write_lines("jobs.jsonl", lines);
    let flow = s.path("flow.yaml");
    let text = "steps:\n  a:\n    model: A\n    template: 'Say {{ text }}'\n  b:\n    model: B\n    \
                template: '{{ steps.a.output }} {{ extra }}'\n    max_tokens: 4\n";
    std::fs::write(&flow, text).unwrap();
    let args = ["run", input.to_str().unwrap(), "--workflow", flow.to_str().unwrap(), "-o", s.out_arg()];
    assert_exit(&run(&[&args[..], &["--server", sim.url(), "-q"]].concat()), 1);
    let exported = s.path("exported.jsonl");
    let state = s.path("out.inflight.db");
    assert_exit(&run(&["export", "--state", state.to_str().unwrap(), "-o", exported.to_str().unwrap()]), 0);
    for (results, errors) in [(s.out(), s.errors()), (exported.clone(), s.path("exported.errors.jsonl"))] {
        let results = read_jsonl(&results);
        assert_eq!(results.len(), 5);
        validate_all(&schema("workflow-output.schema.json"), &results, "workflow result");
        let errors = read_jsonl(&errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        validate_all(&schema("workflow-error.schema.json"), &errors, "workflow error");
        let failed = errors.iter().find(|e| e["custom_id"] == "no-extra").unwrap();
        assert_eq!((failed["step"].as_str(), failed["error"]["code"].as_str()), (Some("b"), Some("template_error")));
    }
    assert_eq!(std::fs::read(s.out()).unwrap(), std::fs::read(&exported).unwrap(), "export rebuilds the same lines");
}
