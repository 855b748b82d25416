//! Test helpers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The built binary.
pub fn bin() -> Command {
    // Tests compare runs of the same jobs: the response cache is off unless a test turns it on.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inflight"));
    cmd.env("INFLIGHT_CACHE", "off");
    cmd
}

/// A temporary directory with a jobs file and an output path.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    out: String,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl").to_str().unwrap().to_owned();
        Scratch { dir, out }
    }

    /// The output path as a command-line argument.
    pub fn out_arg(&self) -> &str {
        &self.out
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `lines` (one per line) to `name` and returns its path.
    pub fn write_lines(&self, name: &str, lines: impl IntoIterator<Item = String>) -> PathBuf {
        let mut text = String::new();
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn out(&self) -> PathBuf {
        self.path("out.jsonl")
    }

    pub fn errors(&self) -> PathBuf {
        self.path("out.errors.jsonl")
    }
}

/// Runs `inflight` with `args`, returning its output (never panics on a non-zero exit).
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    bin().args(args).output().expect("inflight runs")
}

/// The exit code, with stderr shown on mismatch.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names in `dir`, sorted: what a run left there.
pub fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Every line of a JSONL file, parsed; panics on a torn or invalid line.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"))).collect()
}

/// The complete lines of a file another process is appending to (a torn last line is not counted).
pub fn whole_lines(path: &Path) -> usize {
    std::fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

/// Whether an error record is a bad input line: it never became a job, so it has no batch request id.
pub fn is_bad_line(record: &Value) -> bool {
    record["id"].is_null() && record["line"].is_u64()
}

/// How many times each accepted job's id (`custom_id`; a workflow line's `id`) appears across the results and
/// errors files. Bad-line records are counted apart (a duplicate's record repeats the id it collided with).
pub fn id_counts(out: &Path, errors: &Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for v in read_jsonl(out).into_iter().chain(read_jsonl(errors)).filter(|v| !is_bad_line(v)) {
        // A batch line's job is its `custom_id`; a workflow line's, its `id`.
        if let Some(id) = v["custom_id"].as_str().or_else(|| v["id"].as_str()) {
            *m.entry(id.to_owned()).or_default() += 1;
        }
    }
    m
}

/// `n` prompt lines with ids `j0..j{n-1}`.
pub fn prompt_lines(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| serde_json::json!({"id": format!("j{i}"), "prompt": format!("say {i}")}).to_string())
}

/// A current-thread runtime running a simulator for the duration of a test.
pub struct Sim {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<inflight_sim::SimServer>,
    url: String,
}

impl Sim {
    pub fn start(cfg: inflight_sim::SimConfig) -> Sim {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = rt.block_on(inflight_sim::SimServer::start(cfg)).expect("simulator starts");
        let url = server.url();
        Sim { rt, server: Some(server), url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn stats(&self) -> inflight_sim::SimStats {
        self.server.as_ref().unwrap().stats()
    }

    /// Takes the server down (connections refused) until [`Sim::restart`].
    pub fn stop(&mut self) -> u16 {
        let server = self.server.take().unwrap();
        let port = server.addr().port();
        self.rt.block_on(server.shutdown());
        port
    }

    pub fn restart(&mut self, cfg: inflight_sim::SimConfig) {
        self.server = Some(self.rt.block_on(inflight_sim::SimServer::start(cfg)).expect("simulator restarts"));
    }
}

/// Sends a signal with the `kill` command (no libc dependency in tests).
pub fn send_signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Asserts that `doc` validates against `docs/schema/<schema>`.
#[track_caller]
pub fn assert_matches_schema(doc: &Value, schema: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema").join(schema);
    let schema_doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema_doc).unwrap_or_else(|e| panic!("{schema}: {e}"));
    let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{doc} violates {schema}: {errors:?}");
}

/// The shape of an OpenAI Batch output line of a chat job: the JSON type at each place a client reads, so
/// lines answered by different servers (or the engine) can be compared.
pub fn chat_line_shape(record: &Value) -> Vec<(&'static str, &'static str)> {
    const PLACES: [&str; 13] = [
        "/id",
        "/custom_id",
        "/error",
        "/response/status_code",
        "/response/request_id",
        "/response/body/object",
        "/response/body/model",
        "/response/body/choices/0/message/role",
        "/response/body/choices/0/message/content",
        "/response/body/choices/0/finish_reason",
        "/response/body/usage/prompt_tokens",
        "/response/body/usage/completion_tokens",
        "/response/body/usage/total_tokens",
    ];
    let kind = |v: Option<&Value>| match v {
        None => "absent",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "bool",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    };
    PLACES.iter().map(|&p| (p, kind(record.pointer(p)))).collect()
}

/// The database the PostgreSQL tests use (a URL with no `run=`).
pub fn pg_database() -> &'static str {
    static DB: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DB.get_or_init(|| {
        if let Ok(url) = std::env::var("INFLIGHT_TEST_PG") {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg.sh");
        let pid = std::process::id().to_string();
        let out = std::process::Command::new(script).args(["start", "--owner-pid", &pid]).output().unwrap();
        assert!(
            out.status.success(),
            "scripts/pg.sh start failed (scripts/pg.sh setup installs PostgreSQL; or set INFLIGHT_TEST_PG): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().lines().next().unwrap().to_owned()
    })
}
