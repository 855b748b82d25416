//! Crash safety: SIGKILL `inflight run` at random moments of a 2,000-job run, restart it each time, and find
//! every job id exactly once across OUT.jsonl and OUT.errors.jsonl, with a sound state file.

use std::time::{Duration, Instant};

use inflight_sim::{Profile, SimConfig};
use rand::Rng;

use crate::util::*;

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let sim = Sim::start(SimConfig::profile(Profile::Batching32).with_time_scale(10.0));
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(2000));
    let args = [
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        sim.url(),
        "-q",
        "-c",
        "32",
        "--max-tokens",
        "16",
    ];
    let mut rng = rand::rng();
    let mut kills = 0;
    // The first kill lands during start-up or ingest, the others after a random number of results.
    for round in 0..6 {
        let mut child =
            bin().args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        let have = lines_in(&s.out());
        let target = if round == 0 { 0 } else { have + rng.random_range(1..300) };
        let deadline = Instant::now() + Duration::from_secs(60);
        if round == 0 {
            std::thread::sleep(Duration::from_millis(rng.random_range(5..60)));
        } else {
            while lines_in(&s.out()) < target && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "no progress");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if child.try_wait().unwrap().is_none() {
            send_signal(child.id(), "KILL");
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 4, "the run was killed mid-way several times ({kills})");
    assert_exit(&run(&args), 0);
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 2000);
    let dupes: Vec<_> = ids.iter().filter(|(_, &n)| n != 1).collect();
    assert!(dupes.is_empty(), "duplicated: {dupes:?}");
    let store = inflight::store::Store::open_read_only(&s.path("out.inflight.db")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    assert_eq!(store.counts().unwrap().done, 2000);
}

/// Complete lines in a file (a torn last line is not counted; it is what a kill leaves behind).
fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}
