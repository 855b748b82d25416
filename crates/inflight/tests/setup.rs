//! A run refused before it starts (missing input, an output directory that is missing or cannot be written, an
//! unreachable server) says which path or URL and what it was doing, exits 2, and leaves no file behind.

use std::path::Path;
use std::process::Output;

use crate::util::*;

/// Runs `args` in `s` and checks the refusal: exit 2, stderr names `named`, and the directory holds what it
/// held before.
#[track_caller]
fn assert_refused(s: &Scratch, args: &[&str], named: &str) -> Output {
    let before = dir_listing(s.dir.path());
    let out = run(args);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(named), "stderr does not name {named}: {stderr}");
    assert_eq!(dir_listing(s.dir.path()), before, "a refused run left files; stderr: {stderr}");
    out
}

/// A URL nothing listens on: a port the OS just handed out and took back.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_missing_input_is_named_and_leaves_nothing() {
    let sim = Sim::start(inflight_sim::SimConfig::zero_latency());
    let s = Scratch::new();
    let missing = s.path("nope.jsonl");
    let out = assert_refused(&s, &["run", arg(&missing), "-o", s.out_arg(), "--server", sim.url()], arg(&missing));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"), "says what it was doing");
    assert!(dir_listing(s.dir.path()).is_empty());
    assert_eq!(sim.stats().requests, 0);
}

#[test]
fn a_missing_output_directory_is_named_and_leaves_nothing() {
    let sim = Sim::start(inflight_sim::SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(3));
    let out_path = s.path("missing/out.jsonl");
    let out = assert_refused(&s, &["run", arg(&input), "-o", arg(&out_path), "--server", sim.url()], arg(&out_path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot write the output") && stderr.contains("does not exist"), "{stderr}");
    assert_eq!(dir_listing(s.dir.path()), ["jobs.jsonl"]);
}

#[test]
fn an_output_directory_that_cannot_be_written_is_named_and_leaves_nothing() {
    let sim = Sim::start(inflight_sim::SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(3));
    // A regular file where the directory should be: unwritable as a directory for every user, root included.
    std::fs::write(s.path("file"), "").unwrap();
    let out_path = s.path("file/out.jsonl");
    let out = assert_refused(&s, &["run", arg(&input), "-o", arg(&out_path), "--server", sim.url()], arg(&out_path));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));

    // A read-only directory, where the permissions hold (they do not for root, who writes anyway).
    use std::os::unix::fs::PermissionsExt;
    let ro = s.path("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), "").is_ok() {
        std::fs::remove_file(ro.join("probe")).unwrap();
        eprintln!("running as a user who writes in read-only directories: only the not-a-directory case checked");
        return;
    }
    let out_path = ro.join("out.jsonl");
    let out = run(&["run", arg(&input), "-o", arg(&out_path), "--server", sim.url()]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains(arg(&ro)), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir_listing(&ro).is_empty());
}

#[test]
fn an_unreachable_server_is_named_and_leaves_nothing() {
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(3));
    let url = refused_url();
    assert_refused(&s, &["run", arg(&input), "-o", s.out_arg(), "--server", &url], &url);
    assert_eq!(dir_listing(s.dir.path()), ["jobs.jsonl"]);
}

#[test]
fn a_refused_resume_keeps_the_runs_files_and_adds_none() {
    // Only what the refused run made is removed: the state and outputs of the run it would have resumed stay.
    let sim = Sim::start(inflight_sim::SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(3));
    let ok = run(&["run", arg(&input), "-o", s.out_arg(), "--server", sim.url(), "-q"]);
    assert_exit(&ok, 0);
    let made = dir_listing(s.dir.path());
    assert!(made.iter().any(|n| n.ends_with(".inflight.db")), "{made:?}");
    let url = refused_url();
    assert_refused(&s, &["run", arg(&input), "-o", s.out_arg(), "--server", &url], &url);
    assert_eq!(read_jsonl(&s.out()).len(), 3);
}
