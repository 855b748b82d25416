//! `inflight run --workflow`: validation, model-aware scheduling against the simulator's Ollama mode with one
//! loaded model, per-step durability across kill -9 and edits.

use inflight_sim::{Api, Profile, SimConfig};
use serde_json::json;

use crate::util::*;

/// Three steps on two models, A then B then A, at most 16 tokens a step.
pub const ABA: &str = "steps:
  extract:
    model: A
    template: 'Extract the claims from: {{ text }}'
    max_tokens: 16
  critique:
    model: B
    template: 'Critique these claims: {{ steps.extract.output }}'
    max_tokens: 16
  judge:
    model: A
    template: 'Judge the critique {{ steps.critique.output }} of {{ steps.extract.output }}'
    max_tokens: 16
";

/// The simulator as an Ollama server that holds one model at a time and takes 2 s (simulated) to load one.
pub fn one_model_ollama(time_scale: f64) -> SimConfig {
    SimConfig::profile(Profile::Batching32)
        .with_api(Api::Ollama)
        .with_models(vec!["A".into(), "B".into()])
        .with_max_loaded_models(1)
        .with_load_time(std::time::Duration::from_secs(2))
        .with_time_scale(time_scale)
}

pub fn text_lines(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| json!({"id": format!("j{i}"), "text": format!("record {i} says the sky is green")}).to_string())
}

/// Writes `n` text lines and the workflow `text` into `s`: the input's path and the workflow's.
pub fn flow_files(s: &Scratch, n: usize, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let input = s.write_lines("jobs.jsonl", text_lines(n));
    let flow = s.path("flow.yaml");
    std::fs::write(&flow, text).unwrap();
    (input, flow)
}

/// Runs the workflow `text` over `n` text lines on two servers, quietly, and checks every job has its line.
fn run_on_two(s: &Scratch, n: usize, text: &str, servers: [&Sim; 2]) {
    let (input, flow) = flow_files(s, n, text);
    let args = ["run", input.to_str().unwrap(), "--workflow", flow.to_str().unwrap(), "-o", s.out_arg(), "-q"];
    let out = run(&[&args[..], &["--server", servers[0].url(), "--server", servers[1].url()]].concat());
    assert_exit(&out, 0);
    assert_eq!(read_jsonl(&s.out()).len(), n);
}

/// The number in "N model switches" in a run's summary.
pub fn switches_in(stdout: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let at = text.find(" model switches").unwrap_or_else(|| panic!("no switch count in {text}"));
    text[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn three_steps_on_two_models_run_once_each_with_few_switches() {
    let sim = Sim::start(one_model_ollama(100.0));
    let s = Scratch::new();
    let (input, flow) = flow_files(&s, 2000, ABA);
    let args = ["run", input.to_str().unwrap(), "--workflow", flow.to_str().unwrap(), "-o", s.out_arg()];
    let out = run(&[&args[..], &["--server", sim.url(), "--status-every", "100ms"]].concat());
    assert_exit(&out, 0);
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("model A [") && progress.contains(" switches ("), "progress lines: {progress}");
    let lines = read_jsonl(&s.out());
    assert_eq!(lines.len(), 2000);
    let ids: std::collections::HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2000, "every job once");
    for l in &lines {
        for step in ["extract", "critique", "judge"] {
            assert!(l["steps"][step]["output"].is_string(), "{step} missing in {l}");
            assert!(l["steps"][step]["usage"]["completion_tokens"].as_u64().unwrap() > 0);
            assert!(l["steps"][step]["latency_ms"].is_number());
        }
    }
    let stats = sim.stats();
    assert_eq!(stats.requests, 6000, "every step once: {stats:?}");
    let switches = switches_in(&out.stdout);
    assert_eq!(stats.model_loads, switches, "every switch the scheduler made is one load, and nothing else loads");
    // Per-job chaining would load a model for almost every one of the 6,000 requests.
    assert!((3..=12).contains(&switches), "{switches} switches");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("step critique: 2000 done, 0 failed"), "{summary}");
}

#[test]
fn an_invalid_workflow_is_a_usage_error_naming_the_line_before_anything_is_sent() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", text_lines(3));
    let flow = s.path("flow.yaml");
    let cases = [
        (ABA.replace("steps.critique.output", "steps.critic.output"), "line 12", "unknown step `critic`"),
        (ABA.replace("{{ text }}", "{{ steps.judge.output }}"), "line", "cycle"),
        (ABA.replace("{{ text }}'", "{{ text '"), "line 4", "does not compile"),
    ];
    for (text, line, reason) in cases {
        std::fs::write(&flow, text).unwrap();
        let out = run(&[
            "run",
            input.to_str().unwrap(),
            "--workflow",
            flow.to_str().unwrap(),
            "-o",
            s.out_arg(),
            "--server",
            sim.url(),
        ]);
        assert_exit(&out, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(line) && stderr.contains(reason), "{stderr}");
    }
    assert_eq!(sim.stats().requests, 0);
    assert!(!s.out().exists());
}

/// Finished results of `step` in a run's state, read while the run goes or after it died.
fn done_in(state: &std::path::Path, step: &str) -> u64 {
    let Ok(store) = inflight::store::Store::open_read_only(state) else { return 0 };
    store.step_counts().unwrap_or_default().iter().find(|c| c.step == step).map(|c| c.done).unwrap_or(0)
}

#[test]
fn kill_9_during_step_2_then_an_edit_of_step_3_sends_only_what_is_unfinished_or_changed() {
    const N: u64 = 600;
    let sim = Sim::start(one_model_ollama(10.0));
    let s = Scratch::new();
    let (input, flow) = flow_files(&s, N as usize, ABA);
    let state = s.path("out.inflight.db");
    let args = ["run", input.to_str().unwrap(), "--workflow", flow.to_str().unwrap(), "-o", s.out_arg()];
    let args = [&args[..], &["--server", sim.url(), "-q"]].concat();

    let mut child =
        bin().args(&args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while done_in(&state, "critique") < 10 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before step 2 was under way");
        assert!(std::time::Instant::now() < deadline, "step 2 never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    send_signal(child.id(), "KILL");
    child.wait().unwrap();
    let sent_before = sim.stats().requests;
    let finished: u64 = ["extract", "critique", "judge"].iter().map(|st| done_in(&state, st)).sum();
    assert!(finished < 3 * N, "killed before the end");

    assert_exit(&run(&args), 0);
    assert_eq!(sim.stats().requests - sent_before, 3 * N - finished, "only unfinished steps are sent on resume");
    let ids = id_counts_of(&s.out());
    assert_eq!(ids.len() as u64, N);
    assert!(ids.values().all(|&n| n == 1), "every job once");

    std::fs::write(&flow, ABA.replace("Judge the critique", "Judge, strictly, the critique")).unwrap();
    let sent_before = sim.stats().requests;
    let out = run(&args);
    assert_exit(&out, 0);
    assert_eq!(sim.stats().requests - sent_before, N, "only the edited step is sent again");
    let ids = id_counts_of(&s.out());
    assert_eq!(ids.len() as u64, N);
    assert!(ids.values().all(|&n| n == 1), "the output is rebuilt, never holding a job twice");
    assert!(read_jsonl(&s.errors()).is_empty());
}

/// How many times each workflow job id appears in OUT.jsonl.
fn id_counts_of(out: &std::path::Path) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for line in read_jsonl(out) {
        *m.entry(line["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    m
}

#[test]
fn the_example_workflow_runs_on_an_ollama_server_holding_one_model() {
    let sim = Sim::start(one_model_ollama(50.0).with_models(vec!["extractor".into(), "critic".into()]));
    let s = Scratch::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (input, flow) = (root.join("examples/segments.jsonl"), root.join("examples/claims-flow.yaml"));
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "--workflow",
        flow.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        sim.url(),
        "-q",
    ]);
    assert_exit(&out, 0);
    assert_eq!(read_jsonl(&s.out()).len(), 200);
    assert_eq!(sim.stats().requests, 600);
    let status = run(&["status", "--state", s.path("out.inflight.db").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("step judge: 200 done, 0 failed"), "{text}");
}

#[test]
fn invalid_json_answers_are_asked_again_until_every_job_has_a_valid_output() {
    let sim = Sim::start(one_model_ollama(100.0).with_json_answers(0.2));
    let s = Scratch::new();
    let json_step = "  extract:\n    model: A\n    template: 'Claims in {{ text }}, as JSON'\n    max_tokens: 16\n    \
        output: json\n    schema: {type: object, required: [answer], properties: {answer: {type: string}}}\n";
    let (input, flow) = flow_files(&s, 300, &ABA.replacen(&ABA[7..ABA.find("  critique:").unwrap()], json_step, 1));
    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "--workflow",
        flow.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        sim.url(),
        "-q",
        "--max-attempts",
        "10",
    ]);
    assert_exit(&out, 0);
    let lines = read_jsonl(&s.out());
    assert_eq!(lines.len(), 300);
    assert!(
        lines.iter().all(|l| l["steps"]["extract"]["output"]["answer"].is_string()),
        "every step-1 output is valid"
    );
    let store = inflight::store::Store::open_read_only(&s.path("out.inflight.db")).unwrap();
    let refused = store.step_counts().unwrap().iter().find(|c| c.step == "extract").unwrap().invalid;
    assert!(refused > 20, "the server sent invalid JSON to step 1 ({refused} refused)");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(&format!("step extract: 300 done, 0 failed, {refused} answers refused")), "{summary}");
    assert_eq!(sim.stats().requests, 900 + refused, "each refused answer is asked once more");
}

#[test]
fn steps_on_two_servers_run_at_the_same_time() {
    let (one, two) = (Sim::start(SimConfig::profile(Profile::Lanes4)), Sim::start(SimConfig::profile(Profile::Lanes4)));
    let s = Scratch::new();
    // Both simulators answer any model: each step is pinned, or step a would run on both.
    let text = format!(
        "steps:\n  a:\n    model: A\n    server: {}\n    template: 'Claims in {{{{ text }}}}'\n    max_tokens: 16\n  \
         b:\n    model: B\n    server: {}\n    template: 'Critique {{{{ steps.a.output }}}}'\n    max_tokens: 16\n",
        one.url(),
        two.url()
    );
    let (input, flow) = flow_files(&s, 200, &text);
    let args = ["run", input.to_str().unwrap(), "--workflow", flow.to_str().unwrap(), "-o", s.out_arg()];
    let out = run(&[&args[..], &["--server", one.url(), "-q", "-c", "4"]].concat());
    assert_exit(&out, 0);
    assert_eq!(read_jsonl(&s.out()).len(), 200);
    assert_eq!((one.stats().requests, two.stats().requests), (200, 200), "each step on its own server");

    let db = rusqlite::Connection::open(s.path("out.inflight.db")).unwrap();
    let spans = |step: &str| -> Vec<(i64, i64)> {
        let mut stmt =
            db.prepare("SELECT sent_at, finished_at FROM step_results WHERE step = ?1 ORDER BY sent_at").unwrap();
        stmt.query_map([step], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let (a, b) = (spans("a"), spans("b"));
    let busy = |spans: &[(i64, i64)]| {
        let (mut total, mut end) = (0, i64::MIN);
        for &(s, f) in spans {
            total += (f - s.max(end)).max(0);
            end = end.max(f);
        }
        total
    };
    let wall = b.iter().map(|x| x.1).max().unwrap() - a.iter().map(|x| x.0).min().unwrap();
    assert!(a.iter().any(|x| b.iter().any(|y| y.0 < x.1 && x.0 < y.1)), "both servers busy at once");
    let sum = busy(&a) + busy(&b);
    assert!((wall as f64) < 0.8 * sum as f64, "pipelined: wall {wall} ms vs busy {sum} ms");
}

#[test]
fn a_step_naming_a_model_the_server_lacks_stops_the_run_after_ten_identical_refusals() {
    let sim =
        Sim::start(SimConfig::profile(Profile::Lanes4).with_missing_models(vec!["B".into()]).with_time_scale(50.0));
    let s = Scratch::new();
    let (input, flow) = flow_files(&s, 200, ABA);
    let args = ["run", input.to_str().unwrap(), "--workflow", flow.to_str().unwrap(), "-o", s.out_arg()];
    let out = run(&[&args[..], &["--server", sim.url(), "-q"]].concat());
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("step critique: the first 10 requests all failed the same way"), "{err}");
    assert!(err.contains("model 'B' not found"), "{err}");
    assert!(read_jsonl(&s.errors()).is_empty(), "the refusals are not recorded as the jobs' failures");
    let refused = sim.stats().requests - done_in(&s.path("out.inflight.db"), "extract");
    assert!(refused < 40, "stopped at once, not after every job's step 2: {refused} refusals");

    // The step fixed (B renamed to A), the run goes on: step 1's results are kept, every job ends once.
    std::fs::write(&flow, ABA.replace("model: B", "model: A")).unwrap();
    let before = sim.stats().requests;
    let extracted = done_in(&s.path("out.inflight.db"), "extract");
    let out = run(&[&args[..], &["--server", sim.url(), "-q"]].concat());
    assert_exit(&out, 0);
    assert_eq!(read_jsonl(&s.out()).len(), 200);
    assert_eq!(sim.stats().requests - before, 200 - extracted + 400, "step 1 is not sent again where it finished");
}

#[test]
fn run_json_reports_each_step_and_each_models_concurrency() {
    let sim = Sim::start(one_model_ollama(100.0));
    let s = Scratch::new();
    let (input, flow) = flow_files(&s, 200, ABA);
    let args = ["run", input.to_str().unwrap(), "--workflow", flow.to_str().unwrap(), "-o", s.out_arg()];
    let out = run(&[&args[..], &["--server", sim.url(), "-q", "--json"]].concat());
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_matches_schema(&v, "run-summary.schema.json");
    assert_eq!((v["summary"]["jobs"].as_u64(), v["summary"]["done"].as_u64()), (Some(200), Some(200)));
    let steps: Vec<(&str, u64)> = v["summary"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["step"].as_str().unwrap(), c["done"].as_u64().unwrap()))
        .collect();
    assert_eq!(steps, [("extract", 200), ("critique", 200), ("judge", 200)], "in the workflow's order");
    assert!(v["concurrency"].is_null());
    let w = &v["workflow"];
    assert_eq!(w["mode"], "auto");
    let server = &w["servers"][0];
    assert_eq!(server["switches"].as_u64(), Some(sim.stats().model_loads), "every switch is one load: {w}");
    let models: Vec<&str> = server["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(models.len(), 2, "one controller per model: {w}");
    assert!(models.contains(&"A") && models.contains(&"B"), "{w}");
    assert_eq!((&v["exit"]["code"], &v["exit"]["meaning"]), (&json!(0), &json!("success")));
    assert_eq!(switches_in(&out.stderr), server["switches"].as_u64().unwrap(), "the text on stderr says the same");
}

#[test]
fn a_step_naming_no_server_runs_on_the_server_that_lists_its_model() {
    let lists = |m: &str| SimConfig::profile(Profile::Lanes4).with_time_scale(50.0).with_models(vec![m.into()]);
    let (one, two) = (Sim::start(lists("A")), Sim::start(lists("B")));
    let s = Scratch::new();
    let text =
        "steps:\n  a:\n    model: A\n    template: 'Claims in {{ text }}'\n    max_tokens: 8\n  b:\n    model: B\n    \
                template: 'Critique {{ steps.a.output }}'\n    max_tokens: 8\n";
    run_on_two(&s, 100, text, [&one, &two]);
    assert_eq!((one.stats().requests, two.stats().requests), (100, 100), "each step where its model is");
}

#[test]
fn a_step_whose_model_several_servers_list_runs_on_all_of_them_each_unit_once() {
    let lists = |m: Vec<String>| SimConfig::profile(Profile::Lanes4).with_time_scale(50.0).with_models(m);
    // Step a's model is on both servers; step b's only on the second.
    let (one, two) = (Sim::start(lists(vec!["A".into()])), Sim::start(lists(vec!["A".into(), "B".into()])));
    let s = Scratch::new();
    let n = 300;
    let text =
        "steps:\n  a:\n    model: A\n    template: 'Claims in {{ text }}'\n    max_tokens: 8\n  b:\n    model: B\n    \
                template: 'Critique {{ steps.a.output }}'\n    max_tokens: 8\n";
    run_on_two(&s, n, text, [&one, &two]);
    let (r1, r2) = (one.stats().requests, two.stats().requests);
    println!("requests: first server {r1} (step a), second {r2} (steps a and b)");
    assert_eq!(r1 + r2, 2 * n as u64, "each step of each job sent once");
    assert!(r1 > 0, "the first server took some of step a");
    assert!(r2 > n as u64, "the second server took all of step b and some of step a");
}

#[test]
fn servers_listing_the_same_models_each_keep_the_one_they_have_loaded() {
    // Two Ollama servers that hold one model at a time, both listing A and B; the first has A loaded, the second
    // B. Two steps that both read only the input: x on A, y on B, both ready from the start.
    let (one, two) = (Sim::start(one_model_ollama(100.0)), Sim::start(one_model_ollama(100.0)));
    let s = Scratch::new();
    for (sim, model) in [(&one, "A"), (&two, "B")] {
        let job = s.write_lines(&format!("load-{model}.jsonl"), [json!({"prompt": "hello"}).to_string()]);
        let out = s.path(&format!("load-{model}.out.jsonl"));
        let args = ["run", job.to_str().unwrap(), "-o", out.to_str().unwrap(), "--server", sim.url(), "-q"];
        assert_exit(&run(&[&args[..], &["--model", model, "--cache", "off"]].concat()), 0);
    }
    let before = [one.stats().model_loads, two.stats().model_loads];
    let n = 600;
    let text =
        "steps:\n  x:\n    model: A\n    template: 'Claims in {{ text }}'\n    max_tokens: 8\n  y:\n    model: B\n    \
                template: 'Topics of {{ text }}'\n    max_tokens: 8\n";
    run_on_two(&s, n, text, [&one, &two]);
    let loads = [one.stats().model_loads - before[0], two.stats().model_loads - before[1]];
    let requests = [one.stats().requests - 1, two.stats().requests - 1];
    println!("model loads during the run: {loads:?}; requests: {requests:?}");
    assert_eq!(requests[0] + requests[1], 2 * n as u64, "each step of each job sent once");
    // Each server starts on the model it has; at most one switch each, to help with the other's model once its
    // own work is all taken.
    assert!(loads.iter().all(|&l| l <= 1), "servers switched models: {loads:?}");
}
