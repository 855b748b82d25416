//! The plain terminal report: what was found, then each verdict with its numbers and the line to paste.

use std::fmt::Write;

use super::server::Known;
use super::DoctorReport;

/// The report as text for a terminal.
pub fn text(r: &DoctorReport) -> String {
    let mut out = String::new();
    let f = &r.facts;
    let h = &f.host;
    let cores = h.physical_cores.map_or("unknown".into(), |n| n.to_string());
    let _ = write!(out, "host:    {cores} physical cores, {} logical", h.logical_cores);
    if let (Some(total), Some(avail)) = (h.memory_total_mib, h.memory_available_mib) {
        let _ = write!(out, "; memory {:.1} GiB ({:.1} GiB available)", total as f64 / 1024.0, avail as f64 / 1024.0);
    }
    if let Some([a, b, c]) = h.load_average {
        let _ = write!(out, "; load {a:.2} {b:.2} {c:.2}");
    }
    out.push('\n');
    for g in &h.gpus {
        let _ = writeln!(
            out,
            "gpu:     {}, {} / {} MiB used, {}% busy at this instant",
            g.name, g.memory_used_mib, g.memory_total_mib, g.utilization_pct
        );
    }
    let s = &f.server;
    let _ = writeln!(out, "server:  {} at {}", s.description, s.url);
    let setting = |out: &mut String, what: &str, k: &Option<Known<u64>>| {
        if let Some(k) = k {
            let _ = writeln!(out, "         {what}: {} ({})", k.value, k.source);
        }
    };
    setting(&mut out, "lanes", &s.lanes);
    setting(&mut out, "context per lane", &s.context_per_lane);
    setting(&mut out, "threads", &s.threads);
    setting(&mut out, "batch threads", &s.batch_threads);
    setting(&mut out, "models kept loaded", &s.max_loaded_models);
    for m in &s.loaded {
        let expiry = m.expires_in_s.map_or("no expiry given".into(), |e| format!("unloads in {e:.0} s"));
        let _ = writeln!(out, "         loaded: {} ({expiry})", m.name);
    }
    if let Some(b) = s.busy {
        let _ = writeln!(out, "         at first look: {} running, {} waiting", b.running, b.waiting);
    }
    if let Some(j) = &f.jobs {
        let _ = writeln!(
            out,
            "jobs:    {} sampled from {}: prompts median {} / largest {} tokens, largest context needed {} ({})",
            j.sampled, j.path, j.prompt_tokens_p50, j.prompt_tokens_max, j.context_needed_max, j.token_estimate
        );
    }
    if let Some(p) = &f.probe {
        if let Some(ms) = p.first_request_ms {
            let _ = writeln!(out, "probe:   first request {ms:.0} ms (left out)");
        }
        for l in &p.levels {
            let busy = l.server_busy_max.map_or(String::new(), |n| format!(", server busy <= {n}"));
            let _ = writeln!(
                out,
                "         {:>2} in flight: {:>7.2} jobs/s {:>8.1} tok/s  median {:>6.0} ms  ({} answers, {} errors{busy})",
                l.concurrency, l.jobs_per_s, l.output_tokens_per_s, l.latency_p50_ms, l.answers, l.errors
            );
        }
        if let Some(n) = p.effective_lanes {
            let _ = writeln!(out, "         effective lanes: {n}");
        }
        if let Some(sp) = &p.spaced {
            let loads: Vec<String> = sp.requests.iter().map(|q| format!("{:.0} ms", q.load_ms)).collect();
            let _ = writeln!(out, "         requests {:.1} s apart, load_duration: {}", sp.gap_s, loads.join(", "));
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "note:    {n}");
    }
    out.push('\n');
    if r.verdicts.is_empty() {
        out.push_str("Nothing to change: no rule found a bottleneck in these settings.\n");
    }
    for (i, v) in r.verdicts.iter().enumerate() {
        let _ = writeln!(out, "{}. {}", i + 1, v.finding);
        for e in &v.evidence {
            let _ = writeln!(out, "   - {e}");
        }
        let _ = writeln!(out, "   fix: {}\n", v.fix);
    }
    out
}
