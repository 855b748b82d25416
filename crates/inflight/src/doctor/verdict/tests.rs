//! The rules on synthetic facts: each fires on the evidence it names, stays quiet without it, and gives a
//! line that changes the right setting.

use super::*;
use crate::backend::ServerKind;
use crate::doctor::host::HostFacts;
use crate::doctor::jobs::JobsFacts;
use crate::doctor::probe::ProbeFacts;
use crate::doctor::process::ProcessFacts;
use crate::doctor::reload::{SpacedProbe, SpacedRequest};
use crate::doctor::server::{Busy, LoadedModel, ServerFacts};

fn level(concurrency: usize, jobs_per_s: f64, latency_ms: f64) -> ProbeLevel {
    ProbeLevel {
        concurrency,
        answers: 12,
        errors: 0,
        jobs_per_s,
        output_tokens_per_s: jobs_per_s * 32.0,
        latency_p50_ms: latency_ms,
        server_busy_max: None,
    }
}

fn probe(levels: Vec<ProbeLevel>) -> Option<ProbeFacts> {
    let effective_lanes = crate::doctor::probe::effective_lanes(&levels);
    Some(ProbeFacts { first_request_ms: None, levels, unmeasured: vec![], effective_lanes, spaced: None })
}

fn llama(args: &[&str], slots: u64) -> Facts {
    Facts {
        host: HostFacts {
            physical_cores: Some(2),
            logical_cores: 2,
            load_average: Some([0.5, 0.5, 0.5]),
            ..Default::default()
        },
        server: ServerFacts {
            kind: ServerKind::LlamaServer { slots: Some(slots) },
            lanes: Some(Known::new(slots, "/props total_slots")),
            process: Some(ProcessFacts {
                pid: 9,
                command: args.iter().map(|a| a.to_string()).collect(),
                environment: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn kinds(f: &Facts) -> Vec<VerdictKind> {
    judge(f).iter().map(|v| v.kind).collect()
}

#[test]
fn a_healthy_four_lane_server_needs_nothing() {
    let mut f = llama(&["llama-server", "-np", "4", "-t", "2"], 4);
    f.server.threads = Some(Known::new(2, "command line"));
    f.probe = probe(vec![level(1, 1.0, 900.0), level(2, 1.9, 950.0), level(4, 3.7, 1000.0), level(8, 3.9, 2000.0)]);
    assert_eq!(kinds(&f), []);
}

#[test]
fn threads_over_physical_cores_recommend_the_core_count_in_the_servers_own_command() {
    let mut f = llama(&["/opt/llama-server", "-m", "my model.gguf", "-np", "4", "-t", "4"], 4);
    f.server.threads = Some(Known::new(4, "inferred from the command line of PID 9 (-t)"));
    f.probe = probe(vec![level(1, 1.1, 900.0), level(2, 2.0, 1000.0), level(4, 3.9, 1000.0), level(8, 4.0, 2000.0)]);
    let v = judge(&f);
    assert_eq!(v.len(), 1, "{v:#?}");
    let t = &v[0];
    assert_eq!(t.kind, VerdictKind::ThreadOversubscription);
    assert!(t.finding.contains("4 threads on 2 physical cores"), "{}", t.finding);
    assert!(t.evidence.iter().any(|e| e.contains("PID 9")), "{:?}", t.evidence);
    assert_eq!(t.fix, "/opt/llama-server -m 'my model.gguf' -np 4 -t 2");
    assert_eq!(t.change, Change::new("-t", 2));
}

#[test]
fn batch_threads_are_fixed_too_and_unknown_threads_are_only_a_note() {
    let mut f = llama(&["llama-server", "--threads=8", "-tb", "8"], 4);
    f.server.threads = Some(Known::new(8, "cmd"));
    f.server.batch_threads = Some(Known::new(8, "cmd"));
    assert_eq!(judge(&f)[0].fix, "llama-server --threads=2 -tb 2");
    let mut unknown = llama(&["llama-server"], 4);
    unknown.server.process = None;
    assert_eq!(kinds(&unknown), []);
    assert!(notes(&unknown).iter().any(|n| n.starts_with("threads: unknown")));
}

#[test]
fn other_servers_on_the_host_are_named_with_their_threads() {
    let mut f = llama(&["llama-server", "-np", "4", "-t", "2"], 4);
    f.other_servers = vec![ProcessFacts {
        pid: 77,
        command: ["/opt/llama-server", "--models-dir", "m", "-t", "2"].map(String::from).to_vec(),
        environment: None,
    }];
    let n = notes(&f);
    assert!(n.iter().any(|n| n.starts_with("other inference servers on this host: PID 77 llama-server -t 2")), "{n:?}");
    assert_eq!(kinds(&f), [], "a note, not a verdict: doctor cannot tell whether they are busy");
}

#[test]
fn levels_the_probe_could_not_measure_ask_for_a_longer_probe() {
    let mut f = llama(&["llama-server", "-np", "1"], 1);
    f.probe = probe(vec![level(1, 0.5, 2000.0), level(2, 0.5, 4000.0)]);
    if let Some(p) = f.probe.as_mut() {
        p.unmeasured = vec![4, 8];
    }
    let n = notes(&f);
    assert!(n.iter().any(|n| n.starts_with("not measured at 4, 8 in flight")), "{n:?}");
    assert_eq!(judge(&f)[0].evidence.iter().filter(|e| e.contains("in flight:")).count(), 2);
}

#[test]
fn one_slot_is_serialized_and_the_fix_adds_parallel() {
    let mut f = llama(&["llama-server", "-np", "1", "-t", "2"], 1);
    f.probe = probe(vec![level(1, 4.8, 200.0), level(2, 4.9, 400.0), level(4, 4.8, 800.0), level(8, 4.7, 1700.0)]);
    let v = judge(&f);
    assert_eq!(v.iter().map(|v| v.kind).collect::<Vec<_>>(), [VerdictKind::Serialized]);
    assert!(v[0].evidence.contains(&"effective lanes measured: 1".to_owned()), "{:?}", v[0].evidence);
    assert_eq!(v[0].fix, "llama-server -np 4 -t 2");
}

/// The serialized verdict's fix for a one-slot llama-server started with `args`.
fn lane_fix(args: &[&str], slots_n_ctx: Option<u64>) -> String {
    let mut f = llama(args, 1);
    f.server.context_per_lane = slots_n_ctx.map(|n| Known::new(n, "/slots n_ctx"));
    let v = judge(&f);
    assert_eq!(v[0].kind, VerdictKind::Serialized, "{v:#?}");
    assert_eq!(v[0].change, Change::new("--parallel", 4));
    v[0].fix.clone()
}

#[test]
fn more_slots_keep_each_slots_context() {
    // -c is shared by the slots: -np 4 -c 1024 would leave each request 256 tokens.
    assert_eq!(lane_fix(&["llama-server", "-np", "1", "-c", "1024"], None), "llama-server -np 4 -c 4096");
    assert_eq!(
        lane_fix(&["llama-server", "--parallel=1", "--ctx-size", "2048", "-t", "2"], None),
        "llama-server --parallel=4 --ctx-size 8192 -t 2"
    );
    assert_eq!(lane_fix(&["llama-server", "-c", "1024"], None), "llama-server -c 4096 -np 4", "slots from /props");
    // What the server runs wins over the command line: /slots n_ctx is each slot's context.
    assert_eq!(lane_fix(&["llama-server", "-np", "1", "-c", "1024"], Some(2048)), "llama-server -np 4 -c 8192");
    // No -c: the server's default, n_ctx × its slots by /slots, becomes n_ctx × the new slots.
    assert_eq!(lane_fix(&["llama-server", "-np", "1"], Some(4096)), "llama-server -np 4 -c 16384");
    // -c 0 is the model's own context, and nothing says how large: -c is left alone.
    assert_eq!(lane_fix(&["llama-server", "-np", "1", "-c", "0"], None), "llama-server -np 4 -c 0");
    let mut unknown = llama(&["llama-server"], 1);
    unknown.server.process = None;
    let fix = judge(&unknown)[0].fix.clone();
    assert!(fix.starts_with("llama-server ... --parallel 4 -c <4 × the context"), "{fix}");
}

#[test]
fn a_flat_probe_is_serialized_when_the_server_says_nothing_of_its_lanes() {
    let mut f = llama(&["vllm"], 8);
    f.server.kind = ServerKind::Ollama;
    f.server.process = None;
    f.server.lanes = None;
    f.probe = probe(vec![level(1, 2.0, 500.0), level(2, 2.1, 950.0), level(4, 2.0, 2000.0), level(8, 2.0, 4000.0)]);
    let v = judge(&f);
    assert_eq!(v[0].kind, VerdictKind::Serialized);
    assert_eq!(v[0].fix, "OLLAMA_NUM_PARALLEL=4 ollama serve");
}

#[test]
fn a_flat_probe_is_not_serialized_when_the_server_runs_several_at_once() {
    // Other work starved the machine: flat and slow, but four slots and two seen busy together.
    let mut f = llama(&["llama-server", "-np", "4", "-t", "2"], 4);
    let mut levels = vec![level(1, 0.20, 5000.0), level(2, 0.19, 14000.0)];
    levels[1].server_busy_max = Some(2);
    f.probe = probe(levels.clone());
    assert_eq!(kinds(&f), []);
    f.server.lanes = None;
    assert_eq!(kinds(&f), [], "seen running two at once");
    levels[1].server_busy_max = Some(1);
    f.probe = probe(levels);
    assert_eq!(kinds(&f), [VerdictKind::Serialized]);
}

#[test]
fn client_concurrency_far_beyond_the_lanes() {
    let mut f = llama(&["llama-server", "-np", "4"], 4);
    f.client_concurrency = Some(32);
    assert_eq!(kinds(&f), [VerdictKind::ClientOverLanes]);
    f.client_concurrency = Some(6);
    assert_eq!(kinds(&f), []);
    f.client_concurrency = None;
    f.server.busy = Some(Busy { running: 4.0, waiting: 20.0 });
    let v = judge(&f);
    assert!(v[0].evidence[0].contains("24 (running + waiting"), "{:?}", v[0].evidence);
}

fn spaced(loads: &[f64]) -> Option<SpacedProbe> {
    let requests =
        loads.iter().map(|&load_ms| SpacedRequest { load_ms, total_ms: load_ms + 300.0, expires_in_s: None }).collect();
    Some(SpacedProbe { gap_s: 2.0, requests })
}

#[test]
fn reloads_after_a_pause_cost_their_load_time() {
    let mut f = Facts { server: ServerFacts { kind: ServerKind::Ollama, ..Default::default() }, ..Default::default() };
    f.probe = Some(ProbeFacts { spaced: spaced(&[2000.0, 2000.0, 2000.0]), ..Default::default() });
    let v = judge(&f);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, VerdictKind::ModelUnloads);
    assert!(v[0].finding.contains("2.0 s"), "{}", v[0].finding);
    assert!(v[0].evidence[0].starts_with("2 of 2 requests sent 2.0 s apart"), "{:?}", v[0].evidence);
    assert!(v[0].fix.contains("OLLAMA_KEEP_ALIVE=30m"));
    // Only the first request loads: the model stays loaded.
    f.probe = Some(ProbeFacts { spaced: spaced(&[2000.0, 3.0, 2.0]), ..Default::default() });
    assert_eq!(kinds(&f), []);
}

fn jobs(models: &[&str], needed: u64) -> Option<JobsFacts> {
    Some(JobsFacts {
        path: "jobs.jsonl".into(),
        sampled: 50,
        models: models.iter().map(|m| m.to_string()).collect(),
        prompt_tokens_p50: needed / 2,
        prompt_tokens_max: needed - 64,
        output_tokens_max: Some(64),
        context_needed_max: needed,
        token_estimate: "estimated".into(),
    })
}

#[test]
fn more_models_than_loaded_slots_compete() {
    let mut f = Facts { server: ServerFacts { kind: ServerKind::Ollama, ..Default::default() }, ..Default::default() };
    f.jobs = jobs(&["a", "b", "c", "d"], 100);
    let v = judge(&f);
    assert_eq!(v[0].kind, VerdictKind::ModelsCompete);
    assert!(v[0].evidence[1].contains("Ollama's default"), "{:?}", v[0].evidence);
    f.server.max_loaded_models = Some(Known::new(4, "environment"));
    assert_eq!(kinds(&f), []);
}

#[test]
fn context_too_small_for_the_largest_job_scales_with_the_slots() {
    let mut f = llama(&["llama-server", "-np", "4", "-c", "2048"], 4);
    f.server.context_per_lane = Some(Known::new(512, "/slots n_ctx"));
    f.jobs = jobs(&["m"], 900);
    let v = judge(&f);
    assert_eq!(v[0].kind, VerdictKind::ContextTooSmall);
    assert!(v[0].fix.starts_with("llama-server -np 4 -c 8192"), "{}", v[0].fix);
    let mut ollama =
        Facts { server: ServerFacts { kind: ServerKind::Ollama, ..Default::default() }, ..Default::default() };
    ollama.server.loaded = vec![LoadedModel { name: "m".into(), expires_in_s: None, context_length: Some(4096) }];
    ollama.jobs = jobs(&["m"], 900);
    assert_eq!(kinds(&ollama), []);
    ollama.jobs = jobs(&["m"], 5000);
    assert!(judge(&ollama)[0].fix.starts_with("OLLAMA_CONTEXT_LENGTH=7168"));
}

#[test]
fn settings_no_server_reads_are_named_wherever_they_are_set() {
    let mut f = Facts {
        doctor_environment: vec![("OLLAMA_NUM_THREAD".into(), "8".into()), ("OLLAMA_HOST".into(), "x".into())],
        ..Default::default()
    };
    f.server.process = Some(ProcessFacts {
        pid: 3,
        command: vec![],
        environment: Some(vec![("OLLAMA_NUM_CTX".into(), "8192".into())]),
    });
    let v = judge(&f);
    assert_eq!(v.iter().map(|v| v.kind).collect::<Vec<_>>(), [VerdictKind::NonexistentSetting; 2]);
    assert!(v[0].fix.starts_with("unset OLLAMA_NUM_THREAD") && v[0].fix.contains("num_thread"));
    assert!(v[1].evidence[0].contains("PID 3"));
}

#[test]
fn amended_commands_read_back_as_the_same_words() {
    let cmd: Vec<String> = ["a", "--x=1", "-y", "2"].map(String::from).to_vec();
    assert_eq!(amend(&cmd, &["-x", "--x"], "5"), ["a", "--x=5", "-y", "2"]);
    assert_eq!(amend(&cmd, &["-z"], "3"), ["a", "--x=1", "-y", "2", "-z", "3"]);
    assert_eq!(shell_line(&["it's".into(), "a b".into(), "".into()]), r#"'it'\''s' 'a b' ''"#);
}
