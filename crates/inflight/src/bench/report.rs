//! The bench report as a terminal table and as CSV (the JSON is the serialized [`super::BenchReport`]).

use std::fmt::Write;

use super::{BenchReport, LevelReport};

/// A plain-text table, one row per level, with the recommendation below.
pub fn table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "server: {} ({})", r.server, r.server_description);
    let _ = writeln!(s, "workload: {}", r.workload);
    let _ = writeln!(s, "steady state: {}", r.steady_rule);
    let _ = writeln!(
        s,
        "{:>6} {:>12} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}",
        "conc", "out tok/s", "jobs/s", "±95%", "p50 ms", "p90 ms", "p99 ms", "errors", "steady", "answers"
    );
    for l in &r.levels {
        let _ = writeln!(
            s,
            "{:>6} {:>12.1} {:>9.2} {:>6.1}% {:>8.0} {:>8.0} {:>8.0} {:>7.1}% {:>7} {:>8}{}",
            l.concurrency,
            l.output_tokens_per_s,
            l.jobs_per_s,
            l.ci_rel * 100.0,
            l.latency_ms.p50,
            l.latency_ms.p90,
            l.latency_ms.p99,
            l.error_rate * 100.0,
            if l.steady { "yes" } else { "NO" },
            l.answers,
            if l.concurrency == r.recommendation.concurrency { "  <- recommended" } else { "" }
        );
    }
    if let Some(f) = &r.first_20 {
        let _ = writeln!(
            s,
            "first 20 answers (what a quick hand-timed test sees): {:.2} jobs/s, {:.1} output tokens/s",
            f.jobs_per_s, f.output_tokens_per_s
        );
    }
    let rec = &r.recommendation;
    let _ =
        writeln!(s, "recommendation: --concurrency {} ({:.1} {}): {}", rec.concurrency, rec.rate, rec.unit, rec.why);
    if let Some(setting) = &rec.server_setting {
        let _ = writeln!(s, "server: {setting}");
    }
    if let Some(eta) = &rec.eta {
        let _ = writeln!(
            s,
            "ETA for {} jobs: {} (between {} and {})",
            eta.jobs,
            crate::report::format_duration(std::time::Duration::from_secs_f64(eta.seconds)),
            crate::report::format_duration(std::time::Duration::from_secs_f64(eta.low_seconds)),
            crate::report::format_duration(std::time::Duration::from_secs_f64(eta.high_seconds)),
        );
    }
    s
}

/// One CSV row per level.
pub fn csv(levels: &[LevelReport]) -> String {
    let mut s = String::from(
        "concurrency,steady,output_tokens_per_s,jobs_per_s,ci_rel,latency_p50_ms,latency_p90_ms,latency_p95_ms,latency_p99_ms,error_rate,answers,seconds\n",
    );
    for l in levels {
        let _ = writeln!(
            s,
            "{},{},{:.3},{:.4},{:.4},{:.1},{:.1},{:.1},{:.1},{:.4},{},{:.1}",
            l.concurrency,
            l.steady,
            l.output_tokens_per_s,
            l.jobs_per_s,
            l.ci_rel,
            l.latency_ms.p50,
            l.latency_ms.p90,
            l.latency_ms.p95,
            l.latency_ms.p99,
            l.error_rate,
            l.answers,
            l.seconds
        );
    }
    s
}
