//! The rules: facts in, verdicts out. Pure functions, so each rule is tested on synthetic facts.
//!
//! A verdict says what is wrong, the numbers that show it, and one line to paste. Where the server's command
//! line is known the line is that command with the one setting changed, so the fix is exactly the user's
//! server, restarted. Observations that need no change (an unknown thread count, a busy machine) are notes.
//!
//! [`lanes`] holds the rules about how much runs at once (server lanes, threads, client concurrency);
//! [`models`] those about what the requests need (a loaded model, enough context, real settings).

mod lanes;
mod models;
#[cfg(test)]
mod tests;

use serde::Serialize;

use super::probe::ProbeLevel;
use super::server::Known;
use super::Facts;

/// What a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// The server runs one request at a time.
    Serialized,
    /// More inference threads than physical cores.
    ThreadOversubscription,
    /// The client keeps far more requests in flight than the server runs.
    ClientOverLanes,
    /// The model unloads between requests and loads again.
    ModelUnloads,
    /// The jobs use more models than the server keeps loaded.
    ModelsCompete,
    /// A request's context is too small for the jobs.
    ContextTooSmall,
    /// A setting is set that no server reads.
    NonexistentSetting,
}

/// One thing to change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// What it is about.
    pub kind: VerdictKind,
    /// What is wrong, in one sentence.
    pub finding: String,
    /// The numbers that show it.
    pub evidence: Vec<String>,
    /// The line to paste.
    pub fix: String,
    /// The setting the fix changes and its new value, for scripts (`-t` = `2`).
    pub change: Option<Change>,
}

/// A setting and its recommended value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The flag or variable.
    pub setting: String,
    /// The value to give it.
    pub value: String,
}

impl Change {
    fn new(setting: &str, value: impl ToString) -> Option<Change> {
        Some(Change { setting: setting.to_owned(), value: value.to_string() })
    }
}

/// Every verdict the facts support, most fundamental first.
pub fn judge(f: &Facts) -> Vec<Verdict> {
    [
        lanes::serialized(f),
        lanes::threads(f),
        lanes::client_over_lanes(f),
        models::unloads(f),
        models::models_compete(f),
        models::context(f),
    ]
    .into_iter()
    .flatten()
    .chain(models::nonexistent(f))
    .collect()
}

/// Observations worth reading that need no change.
pub fn notes(f: &Facts) -> Vec<String> {
    let mut notes = Vec::new();
    let llama = matches!(f.server.kind, crate::backend::ServerKind::LlamaServer { .. });
    if llama && f.server.threads.is_none() {
        notes.push(match &f.server.process {
            Some(p) => format!(
                "threads: not set on the command line of PID {} (llama-server's default: about the physical cores)",
                p.pid
            ),
            None => "threads: unknown (llama-server does not report -t over HTTP, and its process is not readable \
                     from here)"
                .into(),
        });
    }
    if let (Some(cores), Some([one, ..])) = (f.host.physical_cores, f.host.load_average) {
        if one > cores as f64 {
            notes.push(format!(
                "load average {one:.2} on {cores} physical cores before the probe: other work competes for the CPU, \
                 so the probe's figures are lower than on an idle machine"
            ));
        }
    }
    if !f.host.gpus.is_empty() {
        notes.push(
            "GPU utilization from nvidia-smi is one instant's sample: a GPU that reads 0% between bursts may be \
             the bottleneck; judge by the probe's throughput"
                .into(),
        );
    }
    if let Some(p) = f.probe.as_ref().filter(|p| !p.unmeasured.is_empty()) {
        let skipped: Vec<String> = p.unmeasured.iter().map(usize::to_string).collect();
        let first = p.first_request_ms.map_or(String::new(), |ms| format!(" (the first request took {ms:.0} ms)"));
        notes.push(format!(
            "not measured at {} in flight: too slow a server for the probe's time{first}; a longer --probe-time \
             measures them",
            skipped.join(", ")
        ));
    }
    if let Some(b) = f.server.busy.filter(|b| b.running + b.waiting > 0.0) {
        notes.push(format!(
            "the server was busy when doctor looked ({} running, {} waiting): the probe shared it",
            b.running, b.waiting
        ));
    }
    notes
}

fn level_line(l: &ProbeLevel) -> String {
    let busy = l.server_busy_max.map_or(String::new(), |n| format!("; the server processed at most {n} at once"));
    format!(
        "{} in flight: {:.2} jobs/s, {:.0} output tokens/s, median latency {:.0} ms ({} answers{busy})",
        l.concurrency, l.jobs_per_s, l.output_tokens_per_s, l.latency_p50_ms, l.answers
    )
}

/// The probe's levels that had answers, one line each.
fn probe_lines(f: &Facts) -> Vec<String> {
    let levels = f.probe.as_ref().map(|p| p.levels.as_slice()).unwrap_or_default();
    levels.iter().map(level_line).collect()
}

fn known_line<T: std::fmt::Display>(what: &str, k: &Known<T>) -> String {
    format!("{what}: {} ({})", k.value, k.source)
}

/// `command` with each flag of `flags` set to `value`: the value replaced, or the first spelling appended.
pub fn amend(command: &[String], flags: &[&str], value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(command.len() + 2);
    let mut args = command.iter();
    let mut done = false;
    while let Some(a) = args.next() {
        let inline = a.split_once('=').map(|(k, _)| k).filter(|k| flags.contains(k));
        if flags.contains(&a.as_str()) {
            out.extend([a.clone(), value.to_owned()]);
            args.next();
            done = true;
        } else if let Some(k) = inline {
            out.push(format!("{k}={value}"));
            done = true;
        } else {
            out.push(a.clone());
        }
    }
    if !done {
        out.extend([flags[0].to_owned(), value.to_owned()]);
    }
    out
}

/// Words joined into a line a POSIX shell reads back as the same words.
pub fn shell_line(words: &[String]) -> String {
    let quote = |a: &String| {
        if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// The server's command with `changes` made, or `fallback` when its command line is unknown.
fn command_fix(f: &Facts, changes: &[(&[&str], &str)], fallback: String) -> String {
    match &f.server.process {
        Some(p) if !p.command.is_empty() => {
            let words = changes.iter().fold(p.command.clone(), |words, (flags, value)| amend(&words, flags, value));
            shell_line(&words)
        }
        _ => fallback,
    }
}
