//! The attempt budget holds across crashes: a job or a workflow step whose every attempt fails, with the run
//! killed (SIGKILL) while attempts are in flight and resumed twice, reaches the server at most
//! `--max-attempts` times in total. Both modes go through the one attempt path, which commits each attempt
//! before sending it.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use inflight_sim::{Faults, Profile, SimConfig};

use crate::util::*;

const JOBS: u64 = 8;
const MAX_ATTEMPTS: u64 = 3;

/// A server that holds every request far past the client's timeout: each attempt fails (a transient
/// timeout) while the server keeps answering pings, so each one costs an attempt.
fn stalling() -> Sim {
    let faults = Faults { stall: 1.0, ..Faults::default() };
    Sim::start(SimConfig::profile(Profile::Lanes4).with_faults(faults).with_stall_for(Duration::from_secs(60)))
}

fn spawn(args: &[String]) -> Child {
    bin().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// Runs `args` twice, each time killed once `JOBS` more requests than before have reached the server (every
/// job has an attempt in flight), then to the end; returns the requests the server saw in total.
fn kill_twice_then_finish(sim: &Sim, args: &[String]) -> u64 {
    for round in 1..=2 {
        let mut child = spawn(args);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sim.stats().requests < round * JOBS {
            assert!(child.try_wait().unwrap().is_none(), "the run ended before round {round}'s attempts were sent");
            assert!(Instant::now() < deadline, "round {round}'s attempts never reached the server");
            std::thread::sleep(Duration::from_millis(5));
        }
        send_signal(child.id(), "KILL");
        child.wait().unwrap();
    }
    let out = bin().args(args).output().unwrap();
    assert_exit(&out, 1);
    sim.stats().requests
}

fn common(sim: &Sim, s: &Scratch) -> Vec<String> {
    let args = ["-o", s.out_arg(), "--server", sim.url(), "-q", "-c", "8", "--request-timeout", "1s"];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--max-attempts".into(), MAX_ATTEMPTS.to_string()]);
    args
}

/// Every job is in the errors file once, having spent exactly the budget.
fn assert_all_failed_with_the_budget(s: &Scratch) {
    let errors = read_jsonl(&s.errors());
    assert_eq!(errors.len() as u64, JOBS, "{errors:?}");
    let ids = id_counts(&s.out(), &s.errors());
    assert!(ids.values().all(|&n| n == 1), "every job once: {ids:?}");
    let store = inflight::store::Store::open_read_only(&s.path("out.inflight.db")).unwrap();
    assert_eq!(store.counts().unwrap().failed, JOBS);
}

#[test]
fn a_plain_job_is_sent_at_most_max_attempts_times_across_two_kills() {
    let sim = stalling();
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(JOBS as usize));
    let mut args = vec!["run".to_string(), input.to_str().unwrap().to_string()];
    args.extend(common(&sim, &s));
    args.extend(["--max-tokens".into(), "4".into()]);
    let sent = kill_twice_then_finish(&sim, &args);
    assert!(sent <= JOBS * MAX_ATTEMPTS, "{sent} requests for {JOBS} jobs of at most {MAX_ATTEMPTS} attempts");
    assert_all_failed_with_the_budget(&s);
}

#[test]
fn a_workflow_step_is_sent_at_most_max_attempts_times_across_two_kills() {
    let sim = stalling();
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", crate::workflow::text_lines(JOBS as usize));
    let flow = s.path("flow.yaml");
    std::fs::write(&flow, "steps:\n  only:\n    model: sim-model\n    template: 'Say {{ text }}'\n    max_tokens: 4\n")
        .unwrap();
    let mut args = vec!["run".to_string(), input.to_str().unwrap().to_string()];
    args.extend(["--workflow".to_string(), flow.to_str().unwrap().to_string()]);
    args.extend(common(&sim, &s));
    let sent = kill_twice_then_finish(&sim, &args);
    assert!(sent <= JOBS * MAX_ATTEMPTS, "{sent} requests for {JOBS} steps of at most {MAX_ATTEMPTS} attempts");
    assert_all_failed_with_the_budget(&s);
    let errors = read_jsonl(&s.errors());
    assert!(errors.iter().all(|e| e["step"] == "only"), "{errors:?}");
}
