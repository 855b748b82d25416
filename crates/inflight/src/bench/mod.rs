//! `inflight bench`: an honest sweep of concurrency levels, each run until its rate is steady, with a
//! recommendation, an ETA, and reports (table, JSON, CSV, SVG chart).
//!
//! A 20-request test is fooled by warm-up and bursts; here every level leaves its first window out and runs
//! until the confidence interval of its rate is tight (see [`level`]). The warm-up itself is reported: the rate
//! of the very first 20 answers beside the steady rates.

mod chart;
mod level;
mod metrics;
mod report;

pub use chart::svg_chart;
pub use level::{ci_rel, measure, LevelReport, LevelRule, Live, Quantiles, Record, ServerFigures};
pub use metrics::ServerLoad;
pub use report::{csv, table};

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::{Backend, ServerKind};
use crate::job::Endpoint;
use crate::tune::best::{self, Band};

/// One request of the workload.
#[derive(Debug, Clone)]
pub struct Request {
    /// Where it goes.
    pub endpoint: Endpoint,
    /// The OpenAI-shaped body.
    pub body: String,
    /// How many inputs it carries (jobs of a run): 1, or the batch size of a batched embeddings request.
    pub inputs: u64,
}

/// How the sweep chooses its levels.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Inputs per request to try for an embeddings workload (each a row of the matrix); ignored otherwise.
    pub batch_sizes: Vec<usize>,
    /// Explicit levels, or empty for doubling from 1.
    pub levels: Vec<usize>,
    /// Highest level when doubling.
    pub max_concurrency: usize,
    /// Per-level rule.
    pub rule: LevelRule,
    /// Relative gain below which a doubling "stops growing".
    pub flat: f64,
}

/// The whole report (pinned by `docs/schema/bench-report.schema.json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The server's URL.
    pub server: String,
    /// What the server said it is.
    pub server_description: String,
    /// The workload, in words.
    pub workload: String,
    /// The steady-state rule, in words.
    pub steady_rule: String,
    /// The first 20 answers of the sweep, measured naively (what a hand-timed test reports).
    pub first_20: Option<FirstAnswers>,
    /// Every level measured, in order.
    pub levels: Vec<LevelReport>,
    /// What to use.
    pub recommendation: Recommendation,
}

/// The naive rate of the first answers.
#[derive(Debug, Clone, Serialize)]
pub struct FirstAnswers {
    /// Answers per second, from the first send to the 20th answer.
    pub jobs_per_s: f64,
    /// Output tokens per second, same span.
    pub output_tokens_per_s: f64,
}

/// The recommendation.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// The concurrency to use.
    pub concurrency: usize,
    /// Inputs per embeddings request to use (1 for generation).
    pub batch: usize,
    /// The engine's threads to use (`--engine-threads`); `None` for a server.
    pub threads: Option<usize>,
    /// Its rate (output tokens/s, or jobs/s for embeddings).
    pub rate: f64,
    /// The unit of `rate`.
    pub unit: &'static str,
    /// Its answers per second.
    pub jobs_per_s: f64,
    /// Why.
    pub why: String,
    /// A server-side setting to change, when the server is the limit.
    pub server_setting: Option<String>,
    /// Time for `--for-jobs` jobs at this rate.
    pub eta: Option<Eta>,
}

/// Predicted time for a number of jobs, with an interval from the rate's confidence interval.
#[derive(Debug, Clone, Serialize)]
pub struct Eta {
    /// Jobs.
    pub jobs: u64,
    /// Seconds, at the measured rate.
    pub seconds: f64,
    /// Seconds, at the top of the rate's interval.
    pub low_seconds: f64,
    /// Seconds, at the bottom of the rate's interval.
    pub high_seconds: f64,
}

/// Runs the sweep: concurrency levels for generation, or a (batch size × concurrency) matrix for
/// embeddings, where inputs per request matter as much as requests in flight. `progress` gets a line per
/// update: `(line, false)` while a level runs, `(line, true)` when it ends.
pub async fn sweep(
    backend: Arc<dyn Backend>,
    kind: ServerKind,
    requests: Vec<Request>,
    cfg: &SweepConfig,
    for_jobs: Option<u64>,
    mut progress: impl FnMut(String, bool),
) -> (Vec<LevelReport>, Option<FirstAnswers>, Recommendation) {
    let embeddings = requests.iter().all(|r| r.endpoint == Endpoint::Embedding);
    let batches = if embeddings && !cfg.batch_sizes.is_empty() { cfg.batch_sizes.clone() } else { vec![1] };
    let mut levels: Vec<LevelReport> = Vec::new();
    let mut first_20 = None;
    for batch in batches {
        let requests = if batch > 1 { batched(&requests, batch) } else { requests.clone() };
        let row = sweep_levels(backend.clone(), Arc::new(requests), cfg, &mut first_20, &mut progress).await;
        levels.extend(row);
    }
    let rec = recommend(&levels, kind, for_jobs);
    (levels, first_20, rec)
}

/// One row: the concurrency levels for one workload.
async fn sweep_levels(
    backend: Arc<dyn Backend>,
    requests: Arc<Vec<Request>>,
    cfg: &SweepConfig,
    first_20: &mut Option<FirstAnswers>,
    progress: &mut impl FnMut(String, bool),
) -> Vec<LevelReport> {
    let batch = requests.first().map_or(1, |r| r.inputs);
    let tag = if batch > 1 { format!("batch {batch}, ") } else { String::new() };
    let next = Arc::new(AtomicUsize::new(0));
    let mut levels: Vec<LevelReport> = Vec::new();
    let mut level = cfg.levels.first().copied().unwrap_or(1);
    let mut flat_steps = 0;
    loop {
        let (report, records) =
            level::measure(backend.clone(), requests.clone(), next.clone(), level, &cfg.rule, |live| {
                progress(
                    format!(
                        "{tag}concurrency {level}: {} answers, {:.1}/s now, {}s left at most",
                        live.answers,
                        live.rate,
                        live.left.as_secs()
                    ),
                    false,
                )
            })
            .await;
        if first_20.is_none() {
            *first_20 = first_answers(&records);
        }
        progress(
            format!(
                "{tag}concurrency {level}: {:.1} tokens/s, {:.2} jobs/s ±{:.0}%{}",
                report.output_tokens_per_s,
                report.jobs_per_s,
                report.ci_rel * 100.0,
                if report.steady { "" } else { " (not steady: time cap)" }
            ),
            true,
        );
        let gain = levels.last().map(|prev| rate(&report) / rate(prev).max(1e-9) - 1.0);
        levels.push(report);
        if !cfg.levels.is_empty() {
            match cfg.levels.get(levels.len()) {
                Some(&l) => level = l,
                None => break,
            }
            continue;
        }
        flat_steps = if gain.is_some_and(|g| g < cfg.flat) { flat_steps + 1 } else { 0 };
        if flat_steps >= 2 || level * 2 > cfg.max_concurrency {
            break;
        }
        level *= 2;
    }
    levels
}

/// Embeddings requests carrying `batch` inputs each, the sample's inputs taken in order (cycled to fill).
fn batched(requests: &[Request], batch: usize) -> Vec<Request> {
    let parsed: Vec<serde_json::Value> =
        requests.iter().filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok()).collect();
    let inputs: Vec<serde_json::Value> = parsed
        .iter()
        .flat_map(|v| match &v["input"] {
            serde_json::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        })
        .collect();
    let Some(template) = parsed.first() else { return Vec::new() };
    let groups = inputs.len().div_ceil(batch).max(1);
    (0..groups)
        .map(|g| {
            let group: Vec<serde_json::Value> =
                (0..batch).map(|i| inputs[(g * batch + i) % inputs.len()].clone()).collect();
            let mut body = template.clone();
            body["input"] = serde_json::Value::Array(group);
            Request { endpoint: Endpoint::Embedding, body: body.to_string(), inputs: batch as u64 }
        })
        .collect()
}

/// The engine's sweep, one row of levels per thread count (`rows`: each thread count, its levels and the
/// recommendation within them): the row whose recommendation is fastest, its thread count said in `why`.
pub fn best_row(rows: &[(usize, Vec<LevelReport>, Recommendation)]) -> Option<Recommendation> {
    let (threads, _, rec) = rows.iter().max_by(|a, b| a.2.rate.total_cmp(&b.2.rate))?;
    let each: Vec<String> = rows.iter().map(|(t, _, r)| format!("{t}: {:.1} {}", r.rate, r.unit)).collect();
    let mut rec = rec.clone();
    rec.threads = Some(*threads);
    rec.why = format!(
        "{}; with --engine-threads {threads}, the fastest of the thread counts up to the physical cores ({})",
        rec.why,
        each.join(", ")
    );
    Some(rec)
}

/// The level's objective: output tokens/s, or jobs/s when the server reports no tokens (embeddings).
fn rate(l: &LevelReport) -> f64 {
    if l.output_tokens_per_s > 0.0 {
        l.output_tokens_per_s
    } else {
        l.jobs_per_s
    }
}

fn first_answers(records: &[level::Record]) -> Option<FirstAnswers> {
    let mut ok: Vec<&level::Record> = records.iter().filter(|r| r.ok).collect();
    ok.sort_by_key(|r| r.finished);
    let last = ok.get(19)?;
    let span = last.finished.as_secs_f64();
    let tokens: u64 = ok[..20].iter().map(|r| r.tokens).sum();
    let jobs: u64 = ok[..20].iter().map(|r| r.inputs).sum();
    Some(FirstAnswers { jobs_per_s: jobs as f64 / span, output_tokens_per_s: tokens as f64 / span })
}

/// The most requests the server reported running at once in any level (`/metrics`), as evidence for the
/// cap of [`best::pick`]; none for an embeddings matrix, whose levels count inputs, not requests.
fn busy_max(levels: &[LevelReport]) -> Option<usize> {
    if levels.iter().any(|l| l.batch > 1) {
        return None;
    }
    let max = levels.iter().filter_map(|l| l.server.load.map(|load| load.running_max)).reduce(f64::max)?;
    Some(max.round() as usize)
}

/// The smallest level within the run's band (5%) of the best measured, capped by the most requests the server
/// reported running at once unless a level above is clearly faster: the run's controller's rule of "best"
/// ([`best::pick`]). In an embeddings matrix, the cell within the band with the fewest inputs in flight (then
/// the fewest requests).
pub fn recommend(levels: &[LevelReport], kind: ServerKind, for_jobs: Option<u64>) -> Recommendation {
    let best = levels.iter().map(rate).fold(0.0, f64::max);
    let mut cells: Vec<&LevelReport> = levels.iter().collect();
    cells.sort_by_key(|l| (l.concurrency * l.batch, l.concurrency));
    let points: Vec<(usize, f64)> = cells.iter().map(|l| (l.concurrency * l.batch, rate(l))).collect();
    let busy = busy_max(levels);
    let chosen = best::pick(&points, Band::RUN, busy).map(|i| cells[i]).or_else(|| levels.first()).cloned();
    let capped = busy.filter(|_| best::pick(&points, Band::RUN, None) != best::pick(&points, Band::RUN, busy));
    let Some(c) = chosen else {
        return Recommendation {
            concurrency: 1,
            batch: 1,
            threads: None,
            rate: 0.0,
            unit: "jobs/s",
            jobs_per_s: 0.0,
            why: "nothing was measured".into(),
            server_setting: None,
            eta: None,
        };
    };
    let unit = if c.output_tokens_per_s > 0.0 { "output tokens/s" } else { "jobs/s" };
    let one = levels.iter().find(|l| l.concurrency == 1 && l.batch == c.batch);
    let at = |l: &LevelReport| best::Measured { level: l.concurrency, rate: rate(l), latency: l.latency_ms.p50 };
    let serialized = one.is_some_and(|one| {
        levels
            .iter()
            .filter(|l| l.concurrency >= best::SERIAL_EVIDENCE_LEVEL)
            .any(|l| best::serialized_with(at(one), best, at(l), busy))
    });
    let batch_note = if c.batch > 1 {
        format!(" with {} inputs per request (an embeddings line's `input` may be a list)", c.batch)
    } else {
        String::new()
    };
    let pct = Band::RUN.fraction() * 100.0;
    let why = match capped {
        None => format!("the smallest level{batch_note} within {pct:.0}% of the best measured ({best:.1} {unit})"),
        Some(n) => format!(
            "the smallest level{batch_note} within {pct:.0}% of the best up to {n} in flight, the most the server \
             reported running at once; no level above was clearly faster (beyond the noise of both)"
        ),
    } + &format!("; more in flight only adds waiting (p50 latency {:.0} ms here)", c.latency_ms.p50);
    let server_setting = serialized.then(|| format!("the server runs one request at a time. {}", kind.parallel_fix()));
    let eta = for_jobs.filter(|_| c.jobs_per_s > 0.0).map(|jobs| {
        let seconds = jobs as f64 / c.jobs_per_s;
        let ci = if c.ci_rel.is_finite() { c.ci_rel.min(0.9) } else { 0.5 };
        Eta { jobs, seconds, low_seconds: seconds / (1.0 + ci), high_seconds: seconds / (1.0 - ci) }
    });
    Recommendation {
        concurrency: c.concurrency,
        batch: c.batch,
        threads: c.threads,
        rate: rate(&c),
        unit,
        jobs_per_s: c.jobs_per_s,
        why,
        server_setting,
        eta,
    }
}
