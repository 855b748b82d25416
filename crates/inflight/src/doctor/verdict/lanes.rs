//! Rules about how much runs at once: the server's lanes, its threads against the physical cores, and the
//! client's concurrency against the lanes.

use super::{command_fix, known_line, probe_lines, Change, Verdict, VerdictKind};
use crate::backend::{ServerKind, LLAMA_CONTEXT, LLAMA_SLOTS};
use crate::doctor::server::Known;
use crate::doctor::Facts;

/// Client concurrency at least this many times the lanes is "far beyond" them.
const FAR_BEYOND: usize = 2;

/// The lanes the probe measured (it needs two levels for a trend).
fn measured_lanes(f: &Facts) -> Option<usize> {
    f.probe.as_ref()?.effective_lanes
}

/// One lane, configured or measured. A flat rate alone does not make a server serialized when it says it has
/// more lanes, or was seen running two requests at once: then the hardware (or other work) is the limit, and
/// more lanes would not help.
pub fn serialized(f: &Facts) -> Option<Verdict> {
    let configured_one = f.server.lanes.as_ref().filter(|l| l.value == 1);
    let ran_several = f.probe.iter().flat_map(|p| &p.levels).any(|l| l.server_busy_max.is_some_and(|n| n > 1));
    let claims_lanes = f.server.lanes.as_ref().is_some_and(|l| l.value > 1);
    let measured = measured_lanes(f).filter(|_| !ran_several && !claims_lanes);
    if configured_one.is_none() && measured != Some(1) {
        return None;
    }
    let mut evidence: Vec<String> = configured_one.map(|k| known_line("lanes", k)).into_iter().collect();
    evidence.extend(measured.map(|n| format!("effective lanes measured: {n}")));
    evidence.extend(probe_lines(f));
    // The one rule of how to add lanes (`backend::lanes`), written into the server's own command line.
    let lane_fix = f.server.kind.lane_fix(context_per_slot(f));
    let values: Vec<String> = lane_fix.settings.iter().map(|s| s.value.to_string()).collect();
    let changes: Vec<(&[&str], &str)> = lane_fix
        .settings
        .iter()
        .zip(&values)
        .filter(|(s, _)| !s.flags.is_empty())
        .map(|(s, v)| (s.flags, v.as_str()))
        .collect();
    let fix = if changes.is_empty() { lane_fix.line } else { command_fix(f, &changes, lane_fix.line) };
    let change = lane_fix.settings.first().and_then(|s| Change::new(s.name, s.value));
    Some(Verdict {
        kind: VerdictKind::Serialized,
        finding: "the server runs one request at a time: more in flight only adds waiting, not throughput".into(),
        evidence,
        fix,
        change,
    })
}

/// The context each of a llama-server's slots holds now, so more slots can keep it: `/slots` n_ctx (what the
/// server runs), else the command line's `-c` over its slots (`-np`, else the slots it reports, else 1). No `-c`
/// on the command line (or `-c 0`, the model's own) and no `/slots`: unknown, and the fix leaves `-c` alone
/// rather than guess one smaller than the server's default. With `/slots` and no `-c`, the default total was
/// n_ctx × slots, so the fix's `-c` is n_ctx × the new slots.
fn context_per_slot(f: &Facts) -> Option<u64> {
    if !matches!(f.server.kind, ServerKind::LlamaServer { .. }) {
        return None;
    }
    if let Some(k) = &f.server.context_per_lane {
        return Some(k.value);
    }
    let p = f.server.process.as_ref()?;
    let total: u64 = p.flag(LLAMA_CONTEXT)?.parse().ok().filter(|&c| c > 0)?;
    let slots = p.flag(LLAMA_SLOTS).and_then(|n| n.parse::<u64>().ok());
    let slots = slots.or(f.server.lanes.as_ref().map(|k| k.value)).unwrap_or(1).max(1);
    Some(total / slots)
}

/// Generation or batch threads over the physical cores. llama-server's `-t` is one pool shared by all its
/// slots, so the pool itself is what must fit the cores (not threads × lanes).
pub fn threads(f: &Facts) -> Option<Verdict> {
    let cores = f.host.physical_cores? as u64;
    let over = |k: &Option<Known<u64>>| k.as_ref().filter(|k| k.value > cores).cloned();
    let (t, tb) = (over(&f.server.threads), over(&f.server.batch_threads));
    let worst = t.iter().chain(&tb).map(|k| k.value).max()?;
    let mut evidence = vec![format!(
        "{cores} physical cores ({} logical) on this host; the server's thread pool is shared by all its lanes",
        f.host.logical_cores
    )];
    evidence.extend(t.iter().map(|k| known_line("generation threads (-t)", k)));
    evidence.extend(tb.iter().map(|k| known_line("batch threads (-tb)", k)));
    if let Some([one, ..]) = f.host.load_average {
        evidence.push(format!("load average {one:.2} on {cores} physical cores"));
    }
    evidence.extend(probe_lines(f));
    let value = cores.to_string();
    let mut changes: Vec<(&[&str], &str)> = Vec::new();
    if t.is_some() {
        changes.push((&["-t", "--threads"], &value));
    }
    if tb.is_some() {
        changes.push((&["-tb", "--threads-batch"], &value));
    }
    let fallback =
        format!("llama-server ... -t {cores}{}", if tb.is_some() { format!(" -tb {cores}") } else { "".into() });
    Some(Verdict {
        kind: VerdictKind::ThreadOversubscription,
        finding: format!(
            "{worst} threads on {cores} physical cores: the threads wait for each other at every step; \
             use -t {cores} or fewer"
        ),
        evidence,
        fix: command_fix(f, &changes, fallback),
        change: Change::new(if t.is_some() { "-t" } else { "-tb" }, &value),
    })
}

/// The client's concurrency (given, or seen queued at the server) far beyond the lanes.
pub fn client_over_lanes(f: &Facts) -> Option<Verdict> {
    let (lanes, lanes_from) = match (measured_lanes(f), &f.server.lanes) {
        (Some(n), _) => (n, "measured by the probe".to_owned()),
        (None, Some(k)) => (k.value as usize, k.source.clone()),
        (None, None) => return None,
    };
    let observed = f.server.busy.filter(|b| b.waiting > 0.0).map(|b| (b.running + b.waiting).round() as usize);
    let (client, client_from) = match (f.client_concurrency, observed) {
        (Some(c), _) => (c, "--concurrency".to_owned()),
        (None, Some(c)) => (c, "running + waiting in the server's /metrics".to_owned()),
        (None, None) => return None,
    };
    if client < FAR_BEYOND * lanes.max(1) {
        return None;
    }
    let mut evidence = vec![
        format!("client concurrency: {client} ({client_from})"),
        format!("effective lanes: {lanes} ({lanes_from})"),
    ];
    evidence.extend(probe_lines(f));
    Some(Verdict {
        kind: VerdictKind::ClientOverLanes,
        finding: format!(
            "{client} requests in flight for {lanes} lane(s): the rest wait in the server's queue, adding latency \
             and no throughput"
        ),
        evidence,
        fix: format!(
            "inflight run JOBS.jsonl -o OUT.jsonl -c auto   # or set your client's workers to {lanes}-{}",
            2 * lanes
        ),
        change: Change::new("concurrency", lanes),
    })
}
