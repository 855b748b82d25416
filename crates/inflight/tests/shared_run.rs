//! Several `inflight run` processes share one run through PostgreSQL (`--state postgres://…?run=NAME`), each
//! with its own simulator: every job is answered once whichever worker takes it, a worker killed or stopped past
//! its lease loses its jobs to the others, and each worker's `-o` copy equals `export`'s output. PostgreSQL is the
//! tests' own cluster (`util::pg_database`).

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use inflight_sim::{Profile, SimConfig};
use serde_json::Value;

use crate::util::*;

/// A run of this test's own in the tests' database.
pub fn state_url(test: &str) -> String {
    let db = pg_database();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let sep = if db.contains('?') { '&' } else { '?' };
    format!("{db}{sep}run={test}-{}-{nanos}", std::process::id())
}

/// How long a worker of these tests may take.
const LIMIT: Duration = Duration::from_secs(120);

/// A worker process: `inflight run [INPUT] -o OUT --state URL --server SERVER -m m --max-tokens 16`.
fn worker(input: Option<&Path>, out: &Path, state: &str, server: &str, extra: &[&str]) -> Child {
    spawn_worker(input, out, state, server, &["-m", "m", "--max-tokens", "16"], extra)
}

/// A workflow worker: `inflight run [INPUT] -o OUT --state URL --server SERVER --workflow FLOW`.
fn flow_worker(input: Option<&Path>, flow: &Path, out: &Path, state: &str, server: &str, extra: &[&str]) -> Child {
    spawn_worker(input, out, state, server, &["--workflow", flow.to_str().unwrap()], extra)
}

fn spawn_worker(input: Option<&Path>, out: &Path, state: &str, server: &str, mode: &[&str], extra: &[&str]) -> Child {
    let mut args: Vec<&str> = vec!["run"];
    if let Some(input) = input {
        args.push(input.to_str().unwrap());
    }
    args.extend(["-o", out.to_str().unwrap(), "--state", state, "--server", server]);
    args.extend(mode);
    args.extend(["--status-every", "1s"]);
    args.extend(extra);
    bin().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits for a worker, bounded.
fn finish(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let deadline = Instant::now() + limit;
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            send_signal(pid, "KILL");
            panic!("worker {pid} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().unwrap()
}

fn status(state: &str) -> Value {
    let out = run(&["status", "--state", state, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json ({e}): {out:?}"))
}

/// `inflight export` of the run into `dir`; the results file's path.
fn export(state: &str, dir: &Path) -> PathBuf {
    let path = dir.join("export.jsonl");
    let out = run(&["export", "--state", state, "-o", path.to_str().unwrap()]);
    assert_exit(&out, 0);
    path
}

/// Asserts every one of `n` jobs is in the export once, and returns the export's bytes.
fn assert_each_once(export: &Path, n: usize) -> Vec<u8> {
    let ids = id_counts(export, &export.with_file_name("export.errors.jsonl"));
    assert_eq!(ids.len(), n, "every job in the export");
    let twice: Vec<_> = ids.iter().filter(|(_, &c)| c != 1).collect();
    assert!(twice.is_empty(), "jobs recorded more than once: {twice:?}");
    assert_eq!(whole_lines(&export.with_file_name("export.errors.jsonl")), 0, "no error records");
    std::fs::read(export).unwrap()
}

/// Polls `sim` (bounded) until it has answered `n` requests.
fn wait_answered(sim: &Sim, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while sim.stats().ok < n {
        assert!(Instant::now() < deadline, "the simulator answered only {} requests", sim.stats().ok);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn workers_share_one_run_each_job_once_and_every_copy_equals_the_export() {
    let sims: Vec<Sim> =
        (0..3).map(|_| Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(100.0))).collect();
    let s = Scratch::new();
    let n = 3000;
    let input = s.write_lines("jobs.jsonl", prompt_lines(n));
    let state = state_url("share");
    let outs: Vec<PathBuf> = (0..3).map(|i| s.path(&format!("w{i}.jsonl"))).collect();
    // Two workers start at the same moment, both with the input: they ingest it once between them.
    let a = worker(Some(&input), &outs[0], &state, sims[0].url(), &[]);
    let b = worker(Some(&input), &outs[1], &state, sims[1].url(), &[]);
    // A third joins without the input once the run has its jobs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&state)["summary"]["jobs"].as_u64() != Some(n as u64) {
        assert!(Instant::now() < deadline, "the run never showed its {n} jobs: {}", status(&state));
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = worker(None, &outs[2], &state, sims[2].url(), &[]);
    let results: Vec<Output> = [a, b, c].into_iter().map(|w| finish(w, LIMIT)).collect();
    for r in &results {
        assert_exit(r, 0);
    }
    let exported = assert_each_once(&export(&state, s.dir.path()), n);
    for out in &outs {
        assert!(std::fs::read(out).unwrap() == exported, "{} differs from the export", out.display());
    }
    let requests: Vec<u64> = sims.iter().map(|s| s.stats().requests).collect();
    println!("requests per worker's simulator: {requests:?}");
    assert_eq!(requests.iter().sum::<u64>(), n as u64, "no job sent twice: {requests:?}");
    assert!(requests[0] > 0 && requests[1] > 0, "both first workers took jobs: {requests:?}");
    assert!(requests[2] > 0, "the worker that joined without the input took jobs: {requests:?}");
    let st = status(&state);
    assert_eq!(st["state"], "finished", "{st}");
    let workers = st["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3, "every worker is listed: {st}");
    assert!(workers.iter().all(|w| w["servers"].as_array().is_some_and(|s| s.len() == 1)), "{st}");
}

/// Two workers with 2 s leases on 1,500 jobs, each with its own simulator, once the first has answered 100.
struct TwoWorkers {
    sims: Vec<Sim>,
    s: Scratch,
    n: usize,
    state: String,
    outs: [PathBuf; 2],
    a: Child,
    b: Child,
}

fn two_workers(test: &str) -> TwoWorkers {
    let sims: Vec<Sim> =
        (0..2).map(|_| Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(20.0))).collect();
    let s = Scratch::new();
    let n = 1500;
    let input = s.write_lines("jobs.jsonl", prompt_lines(n));
    let state = state_url(test);
    let outs = [s.path("a.jsonl"), s.path("b.jsonl")];
    let a = worker(Some(&input), &outs[0], &state, sims[0].url(), &["--lease", "2s"]);
    let b = worker(Some(&input), &outs[1], &state, sims[1].url(), &["--lease", "2s"]);
    wait_answered(&sims[0], 100);
    TwoWorkers { sims, s, n, state, outs, a, b }
}

#[test]
fn a_killed_workers_jobs_are_finished_by_the_other_after_its_lease() {
    let TwoWorkers { sims, s, n, state, outs: [_, out_b], a, b } = two_workers("sigkill");
    let killed = a.id();
    send_signal(killed, "KILL");
    let _ = finish(a, Duration::from_secs(10));
    let answered_before_kill = sims[0].stats().ok;
    let b = finish(b, LIMIT);
    assert_exit(&b, 0);
    let exported = assert_each_once(&export(&state, s.dir.path()), n);
    assert!(std::fs::read(&out_b).unwrap() == exported, "the survivor's copy equals the export");
    // The dead worker is listed, and shown as gone once its beats have stopped long enough.
    let deadline = Instant::now() + Duration::from_secs(15);
    let row = loop {
        let st = status(&state);
        let row = st["workers"].as_array().unwrap().iter().find(|w| w["pid"] == killed).cloned();
        let row = row.unwrap_or_else(|| panic!("the killed worker is not listed: {st}"));
        if row["alive"] == false {
            break row;
        }
        assert!(Instant::now() < deadline, "the killed worker still shows alive: {row}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("killed worker after {answered_before_kill} answers; status row: {row}");
    println!("survivor's simulator: {} requests", sims[1].stats().requests);
    assert!(sims[1].stats().requests >= (n as u64).saturating_sub(answered_before_kill), "the survivor did the rest");
}

#[test]
fn a_stopped_worker_past_its_lease_records_nothing_when_it_wakes() {
    let TwoWorkers { sims: _sims, s, n, state, outs: [out_a, out_b], a, b } = two_workers("zombie");
    send_signal(a.id(), "STOP");
    // The other worker takes the stopped one's jobs once their leases expire, and finishes the run.
    let b = finish(b, LIMIT);
    send_signal(a.id(), "CONT");
    let a = finish(a, Duration::from_secs(60));
    assert_exit(&b, 0);
    assert_exit(&a, 0);
    let exported = assert_each_once(&export(&state, s.dir.path()), n);
    assert!(std::fs::read(&out_a).unwrap() == exported, "the woken worker's copy equals the export");
    assert!(std::fs::read(&out_b).unwrap() == exported, "the other worker's copy equals the export");
    let err = stderr(&a);
    let stale: u64 = err
        .lines()
        .find_map(|l| {
            l.strip_suffix(" answers recorded nothing: their claims had expired and other workers took the jobs")
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    println!("stale completions of the woken worker: {stale}");
    assert!(stale > 0, "the woken worker's answers in flight were stale: {err}");
}

#[test]
fn retry_failed_sends_a_shared_runs_failed_jobs_again_once_each() {
    // Each request's first attempt fails with a 500 three times in ten; with one attempt a job those jobs fail.
    let faults = inflight_sim::Faults { error_500: 0.3, max_per_request: 1, ..Default::default() };
    let sim = Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(100.0).with_faults(faults));
    let s = Scratch::new();
    let n = 300;
    let input = s.write_lines("jobs.jsonl", prompt_lines(n));
    let state = state_url("retry");
    let first = finish(worker(Some(&input), &s.out(), &state, sim.url(), &["--max-attempts", "1"]), LIMIT);
    assert_exit(&first, 1);
    let failed = status(&state)["summary"]["failed"].as_u64().unwrap();
    assert!(failed > 0 && failed < n as u64, "some jobs failed: {failed}");
    assert_eq!(whole_lines(&s.errors()), failed as usize, "the copy has their error records");
    let again = finish(worker(None, &s.out(), &state, sim.url(), &["--max-attempts", "1", "--retry-failed"]), LIMIT);
    assert_exit(&again, 0);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains(&format!("--retry-failed: {failed} failed jobs will be sent again")), "{said}");
    let exported = assert_each_once(&export(&state, s.dir.path()), n);
    assert!(std::fs::read(s.out()).unwrap() == exported, "the copy equals the export");
    assert_eq!(whole_lines(&s.errors()), 0, "no error record is left in the copy");
    assert_eq!(sim.stats().requests, n as u64 + failed, "each failed job was sent once more, nothing else");
}

/// Two workflow workers started together on ABA over `n` jobs, each with its own simulator at `time_scale`.
struct FlowWorkers {
    sims: Vec<Sim>,
    s: Scratch,
    state: String,
    outs: [PathBuf; 2],
    a: Child,
    b: Child,
}

fn two_flow_workers(test: &str, n: usize, time_scale: f64, extra: &[&str]) -> FlowWorkers {
    let sims: Vec<Sim> =
        (0..2).map(|_| Sim::start(SimConfig::profile(Profile::Lanes4).with_time_scale(time_scale))).collect();
    let s = Scratch::new();
    let (input, flow) = crate::workflow::flow_files(&s, n, crate::workflow::ABA);
    let state = state_url(test);
    let outs = [s.path("a.jsonl"), s.path("b.jsonl")];
    let a = flow_worker(Some(&input), &flow, &outs[0], &state, sims[0].url(), extra);
    let b = flow_worker(Some(&input), &flow, &outs[1], &state, sims[1].url(), extra);
    FlowWorkers { sims, s, state, outs, a, b }
}

/// Asserts every line of a workflow run's export holds each of ABA's three steps' outputs.
fn assert_every_step(export: &Path) {
    for line in read_jsonl(export) {
        let steps = line["steps"].as_object().unwrap_or_else(|| panic!("no steps in {line}"));
        for step in ["extract", "critique", "judge"] {
            assert!(steps.get(step).is_some_and(|s| s["output"].is_string()), "{step} missing in {line}");
        }
    }
}

#[test]
fn workflow_workers_share_one_run_each_job_and_each_step_once() {
    let n = 600;
    let FlowWorkers { sims, s, state, outs, a, b } = two_flow_workers("flow-share", n, 100.0, &[]);
    for r in [a, b].map(|w| finish(w, LIMIT)) {
        assert_exit(&r, 0);
    }
    let path = export(&state, s.dir.path());
    let exported = assert_each_once(&path, n);
    assert_every_step(&path);
    for out in &outs {
        assert!(std::fs::read(out).unwrap() == exported, "{} differs from the export", out.display());
    }
    let requests: Vec<u64> = sims.iter().map(|s| s.stats().requests).collect();
    println!("requests per worker's simulator: {requests:?}");
    assert_eq!(requests.iter().sum::<u64>(), 3 * n as u64, "each step of each job sent once: {requests:?}");
    assert!(requests.iter().all(|&r| r > 0), "both workers took jobs: {requests:?}");
    // A worker with another workflow is refused.
    let other = s.path("other.yaml");
    std::fs::write(&other, crate::workflow::ABA.replace("Critique these", "Criticize these")).unwrap();
    let refused = finish(flow_worker(None, &other, &s.path("c.jsonl"), &state, sims[0].url(), &[]), LIMIT);
    assert_exit(&refused, 2);
    assert!(stderr(&refused).contains("another workflow"), "{}", stderr(&refused));
}

#[test]
fn a_killed_workflow_workers_jobs_go_on_from_its_answered_steps_on_the_other_each_answered_once() {
    let n = 900;
    let FlowWorkers { sims, s, state, outs, a, b } = two_flow_workers("flow-kill", n, 20.0, &["--lease", "2s"]);
    wait_answered(&sims[0], 100);
    send_signal(a.id(), "KILL");
    let _ = finish(a, Duration::from_secs(10));
    let answered_by_killed = sims[0].stats().ok;
    let b = finish(b, LIMIT);
    assert_exit(&b, 0);
    let path = export(&state, s.dir.path());
    let exported = assert_each_once(&path, n);
    assert_every_step(&path);
    assert!(std::fs::read(&outs[1]).unwrap() == exported, "the survivor's copy equals the export");
    // The killed worker's answered steps were kept in the run: the survivor sent only the rest, but for the few
    // answered as the worker died (in flight, or not yet written).
    let survivor = sims[1].stats().requests;
    let sent_twice = (survivor + answered_by_killed).saturating_sub(3 * n as u64);
    println!(
        "killed worker's answers {answered_by_killed}, survivor's requests {survivor}: {sent_twice} steps sent twice"
    );
    assert!(survivor + answered_by_killed >= 3 * n as u64, "every step answered");
    assert!(sent_twice <= 64, "the survivor ran steps the killed worker had answered: {sent_twice} twice");
    assert!(stderr(&b).contains("steps other workers had answered"), "{}", stderr(&b));
}
