//! The bench report as a terminal table and as CSV (the JSON is the serialized [`super::BenchReport`]).

use std::fmt::Write;

use super::{BenchReport, LevelReport};

/// A plain-text table, one row per level, with the recommendation below.
pub fn table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "server: {} ({})", r.server, r.server_description);
    let _ = writeln!(s, "workload: {}", r.workload);
    let _ = writeln!(s, "steady state: {}", r.steady_rule);
    let matrix = r.levels.iter().any(|l| l.batch > 1);
    let engine = r.levels.iter().any(|l| l.threads.is_some());
    let _ = writeln!(
        s,
        "{}{}{:>6} {:>12} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7} {:>8}",
        if engine { format!("{:>7} ", "threads") } else { String::new() },
        if matrix { format!("{:>6} ", "batch") } else { String::new() },
        "conc",
        "out tok/s",
        "jobs/s",
        "±95%",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "TTFT p50",
        "ITL p50",
        "errors",
        "steady",
        "answers"
    );
    let opt = |q: Option<super::Quantiles>| q.map_or("-".to_owned(), |q| format!("{:.0}", q.p50));
    let itl = |q: Option<super::Quantiles>| q.map_or("-".to_owned(), |q| format!("{:.1}", q.p50));
    for l in &r.levels {
        let chosen = l.concurrency == r.recommendation.concurrency
            && l.batch == r.recommendation.batch
            && l.threads == r.recommendation.threads;
        let _ = writeln!(
            s,
            "{}{}{:>6} {:>12.1} {:>9.2} {:>6.1}% {:>8.0} {:>8.0} {:>8.0} {:>9} {:>8} {:>7.1}% {:>7} {:>8}{}",
            if engine { format!("{:>7} ", l.threads.map_or("-".to_owned(), |t| t.to_string())) } else { String::new() },
            if matrix { format!("{:>6} ", l.batch) } else { String::new() },
            l.concurrency,
            l.output_tokens_per_s,
            l.jobs_per_s,
            l.ci_rel * 100.0,
            l.latency_ms.p50,
            l.latency_ms.p90,
            l.latency_ms.p99,
            opt(l.ttft_ms),
            itl(l.itl_ms),
            l.error_rate * 100.0,
            if l.steady { "yes" } else { "NO" },
            l.answers,
            if chosen { "  <- recommended" } else { "" }
        );
    }
    for l in &r.levels {
        for e in &l.errors {
            let _ = writeln!(s, "  errors at {}: {} x {} (e.g. {})", l.concurrency, e.count, e.kind, e.example);
        }
    }
    for l in r.levels.iter().filter(|l| l.server.decode_tokens_per_s.is_some() || l.server.load.is_some()) {
        let mut parts = Vec::new();
        if let Some(d) = l.server.decode_tokens_per_s {
            parts.push(format!("{d:.1} tokens/s per request"));
        }
        if let Some(p) = l.server.prompt_ms {
            parts.push(format!("prompt {p:.0} ms"));
        }
        if let Some(ms) = l.server.load_ms.filter(|ms| *ms >= 1.0) {
            parts.push(format!("model load {ms:.0} ms per request"));
        }
        if let Some(load) = l.server.load {
            parts.push(format!("{:.1} running, {:.1} waiting", load.running_mean, load.waiting_mean));
        }
        let _ = writeln!(s, "  server at {}: {}", l.concurrency, parts.join(", "));
    }
    if let Some(f) = &r.first_20 {
        let _ = writeln!(
            s,
            "first 20 answers (what a quick hand-timed test sees): {:.2} jobs/s, {:.1} output tokens/s",
            f.jobs_per_s, f.output_tokens_per_s
        );
    }
    let rec = &r.recommendation;
    let batch = if rec.batch > 1 { format!(", {} inputs per request", rec.batch) } else { String::new() };
    let _ = writeln!(
        s,
        "recommendation: --concurrency {}{batch} ({:.1} {}): {}",
        rec.concurrency, rec.rate, rec.unit, rec.why
    );
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
        "concurrency,batch,steady,output_tokens_per_s,jobs_per_s,ci_rel,latency_p50_ms,latency_p90_ms,latency_p95_ms,\
         latency_p99_ms,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,error_rate,answers,seconds,threads\n",
    );
    let q = |q: Option<super::Quantiles>, f: fn(&super::Quantiles) -> f64| {
        q.map_or(String::new(), |q| format!("{:.1}", f(&q)))
    };
    for l in levels {
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{:.4},{:.4},{:.1},{:.1},{:.1},{:.1},{},{},{},{},{:.4},{},{:.1},{}",
            l.concurrency,
            l.batch,
            l.steady,
            l.output_tokens_per_s,
            l.jobs_per_s,
            l.ci_rel,
            l.latency_ms.p50,
            l.latency_ms.p90,
            l.latency_ms.p95,
            l.latency_ms.p99,
            q(l.ttft_ms, |q| q.p50),
            q(l.ttft_ms, |q| q.p99),
            q(l.itl_ms, |q| q.p50),
            q(l.itl_ms, |q| q.p99),
            l.error_rate,
            l.answers,
            l.seconds,
            l.threads.map_or(String::new(), |t| t.to_string())
        );
    }
    s
}
