//! The end-of-run summary (also `inflight status`): counts by outcome, time, sustained rate, latency
//! percentiles and tokens, as text or JSON.

use std::time::Duration;

use serde::Serialize;

use super::progress::format_duration;
use crate::store::{Counts, StepCount};

/// What a summary is computed from.
pub struct SummaryInput {
    /// Counts from the store.
    pub counts: Counts,
    /// Latencies of successful jobs from the store.
    pub latency: hdrhistogram::Histogram<u64>,
    /// This session's finished jobs, output tokens and wall time, when a session is summarizing itself.
    pub session: Option<(u64, u64, Duration)>,
    /// Retries in this session.
    pub retries: u64,
    /// Prompt tokens the server took from its prefix cache in this session, where it says.
    pub cached_prompt_tokens: u64,
    /// Per-step totals of a workflow run (empty otherwise).
    pub steps: Vec<StepCount>,
}

/// A run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Accepted jobs.
    pub jobs: u64,
    /// Succeeded.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Not finished.
    pub pending: u64,
    /// Bad input lines.
    pub bad_lines: u64,
    /// Answers cut by the length limit.
    pub length_cut: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Seconds the rate is measured over.
    pub wall_s: f64,
    /// Finished jobs per second over `wall_s`.
    pub jobs_per_s: f64,
    /// Output tokens per second over `wall_s`.
    pub output_tokens_per_s: f64,
    /// Latency percentiles of successful jobs, milliseconds.
    pub latency_ms: Percentiles,
    /// Retried attempts in this session.
    pub retries: u64,
    /// Prompt tokens the server took from its prefix cache in this session (0 where it does not say).
    pub cached_prompt_tokens: u64,
    /// `session` when measured over this session, `run` when over the whole run's span.
    pub rate_over: &'static str,
    /// Per-step totals of a workflow run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepCount>,
}

/// Latency percentiles.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
}

impl Summary {
    /// Computes the summary.
    pub fn new(input: SummaryInput) -> Summary {
        let c = input.counts;
        let (finished, tokens, wall, rate_over) = match input.session {
            Some((jobs, tokens, wall)) => (jobs, tokens, wall.as_secs_f64(), "session"),
            None => {
                let span = match (c.first_sent_ms, c.last_finished_ms) {
                    (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
                    _ => 0.0,
                };
                (c.done + c.failed, c.completion_tokens, span, "run")
            }
        };
        let per_s = |n: u64| if wall > 0.0 { n as f64 / wall } else { 0.0 };
        let h = &input.latency;
        Summary {
            jobs: c.total(),
            done: c.done,
            failed: c.failed,
            pending: c.pending,
            bad_lines: c.bad_lines,
            length_cut: c.length_cut,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            wall_s: wall,
            jobs_per_s: per_s(finished),
            output_tokens_per_s: per_s(tokens),
            latency_ms: Percentiles {
                p50: h.value_at_quantile(0.50),
                p95: h.value_at_quantile(0.95),
                p99: h.value_at_quantile(0.99),
            },
            retries: input.retries,
            cached_prompt_tokens: input.cached_prompt_tokens,
            rate_over,
            steps: input.steps,
        }
    }

    /// The human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} jobs: {} done, {} failed, {} pending; {} bad input line{}\n",
            self.jobs,
            self.done,
            self.failed,
            self.pending,
            self.bad_lines,
            if self.bad_lines == 1 { "" } else { "s" }
        );
        let over = if self.rate_over == "session" { "this session" } else { "first send to last answer" };
        s += &format!(
            "  time {} ({over}), sustained {:.2} jobs/s, {:.1} output tokens/s\n",
            format_duration(Duration::from_secs_f64(self.wall_s)),
            self.jobs_per_s,
            self.output_tokens_per_s
        );
        s += &format!(
            "  latency p50 {} ms, p95 {} ms, p99 {} ms\n",
            self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.p99
        );
        s += &format!("  tokens in {}, out {}", self.prompt_tokens, self.completion_tokens);
        if self.cached_prompt_tokens > 0 {
            s += &format!(" ({} prompt tokens this session from the server's prefix cache)", self.cached_prompt_tokens);
        }
        if self.length_cut > 0 {
            s += &format!("; {} answers cut by the length limit (raise --max-tokens?)", self.length_cut);
        }
        if self.retries > 0 {
            s += &format!("\n  {} attempts retried", self.retries);
        }
        for step in &self.steps {
            s += &format!("\n  step {}: {} done, {} failed", step.step, step.done, step.failed);
            if step.invalid > 0 {
                s += &format!(", {} answers refused by its schema and asked again", step.invalid);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_rates() {
        let mut latency = hdrhistogram::Histogram::new(3).unwrap();
        for v in 1..=100 {
            latency.record(v).unwrap();
        }
        let counts =
            Counts { done: 8, failed: 2, bad_lines: 1, length_cut: 3, completion_tokens: 400, ..Default::default() };
        let s = Summary::new(SummaryInput {
            counts,
            latency,
            session: Some((10, 400, Duration::from_secs(5))),
            retries: 0,
            cached_prompt_tokens: 0,
            steps: vec![StepCount { step: "a".into(), done: 7, invalid: 2, failed: 1 }],
        });
        assert_eq!((s.jobs, s.jobs_per_s, s.output_tokens_per_s), (10, 2.0, 80.0));
        assert_eq!(s.latency_ms.p50, 50);
        let text = s.render();
        assert!(text.contains("10 jobs: 8 done, 2 failed, 0 pending; 1 bad input line\n"), "{text}");
        assert!(text.contains("3 answers cut by the length limit"), "{text}");
        assert!(text.contains("step a: 7 done, 1 failed, 2 answers refused"), "{text}");
    }
}
