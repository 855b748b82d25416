//! Prometheus text exposition of what a run counts while it goes: the session's [`LiveStats`] (jobs, tokens,
//! retries, the latency histogram) and each server's limiter (requests in flight, the concurrency limit).
//! `run --metrics-listen` and `serve` render the same counters through [`render`]; nothing here counts
//! anything itself.

use std::fmt::Write;
use std::sync::Arc;

use crate::live::{LiveStats, StatsSnapshot, LATENCY_BOUNDS_S};
use crate::store::Counts;
use crate::tune::Limiter;

/// One server of a run as the metrics see it.
#[derive(Clone)]
pub struct ServerGauge {
    /// Its URL (or the engine's model file).
    pub server: String,
    /// Its permits: requests in flight and the limit.
    pub limiter: Limiter,
}

/// What a live run shows: its counters, its servers and what the state held before this session.
#[derive(Clone)]
pub struct RunView {
    /// This session's counters.
    pub stats: Arc<LiveStats>,
    /// Each server's limiter.
    pub servers: Vec<ServerGauge>,
    /// The state's counts when this session began.
    pub before: Counts,
}

/// A Prometheus text document, one metric family at a time.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family, with its labels (values escaped as the format requires).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.text, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.text, " {value}");
        self
    }

    /// The document.
    pub fn finish(self) -> String {
        self.text
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The run metrics: `stats` (summed over the sessions they cover) and the servers' gauges.
pub fn render(out: &mut Exposition, stats: &StatsSnapshot, servers: &[ServerGauge]) {
    out.family("inflight_jobs_total", "counter", "Jobs finished by this process, by outcome.")
        .sample("inflight_jobs_total", &[("status", "done")], stats.done)
        .sample("inflight_jobs_total", &[("status", "failed")], stats.failed);
    out.family("inflight_retries_total", "counter", "Attempts sent again after a transient failure.").sample(
        "inflight_retries_total",
        &[],
        stats.retries,
    );
    out.family("inflight_output_tokens_total", "counter", "Completion tokens the servers reported.").sample(
        "inflight_output_tokens_total",
        &[],
        stats.completion_tokens,
    );
    out.family("inflight_prompt_tokens_total", "counter", "Prompt tokens the servers reported.").sample(
        "inflight_prompt_tokens_total",
        &[],
        stats.prompt_tokens,
    );
    out.family("inflight_in_flight", "gauge", "Requests in flight, per server.");
    for s in servers {
        out.sample("inflight_in_flight", &[("server", &s.server)], s.limiter.in_flight());
    }
    out.family("inflight_concurrency_limit", "gauge", "Requests the limiter allows in flight, per server.");
    for s in servers {
        out.sample("inflight_concurrency_limit", &[("server", &s.server)], s.limiter.limit());
    }
    let name = "inflight_request_duration_seconds";
    out.family(name, "histogram", "Latency of each job's successful attempt.");
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BOUNDS_S.iter().zip(stats.latency_counts) {
        cumulative += n;
        out.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], cumulative);
    }
    let count: u64 = stats.latency_counts.iter().sum();
    out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count)
        .sample(&format!("{name}_sum"), &[], stats.latency_sum_ms as f64 / 1000.0)
        .sample(&format!("{name}_count"), &[], count);
}

/// The metrics of one run (`run --metrics-listen`).
pub fn render_run(view: &RunView) -> String {
    let mut out = Exposition::default();
    render(&mut out, &view.stats.snapshot(), &view.servers);
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_cumulative_buckets_and_escaped_labels() {
        let stats = LiveStats::default();
        stats.latency.record(30);
        stats.latency.record(700);
        stats.done.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let servers = [ServerGauge { server: "http://a\"b".into(), limiter: Limiter::new(3) }];
        let mut out = Exposition::default();
        render(&mut out, &stats.snapshot(), &servers);
        let text = out.finish();
        assert!(text.contains("inflight_jobs_total{status=\"done\"} 2\n"), "{text}");
        assert!(text.contains("inflight_concurrency_limit{server=\"http://a\\\"b\"} 3\n"), "{text}");
        assert!(text.contains("inflight_request_duration_seconds_bucket{le=\"0.025\"} 0\n"), "{text}");
        assert!(text.contains("inflight_request_duration_seconds_bucket{le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("inflight_request_duration_seconds_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("inflight_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("inflight_request_duration_seconds_sum 0.73\n"), "{text}");
    }
}
