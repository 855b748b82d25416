//! Measuring one concurrency level: a closed loop of `level` workers, windows, and the steady-state rule.
//!
//! The rule (stated in the report): answers to requests sent in the level's first window are left out
//! (warm-up, and the previous level draining); the rest are cut into windows of at least one second, two
//! median latencies and `2 × level` answers; each window's rate is output tokens (or answers) per second of
//! latency times the number in flight (Little's law, unbiased by answers arriving in cohorts). The level is
//! steady once at least three windows and `min_answers` answers are in and the 95% confidence interval of the
//! mean rate is within ±`ci` of it; otherwise it stops at `max_time` and is flagged not steady.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::metrics::{Sampler, ServerLoad};
use super::Request;
use crate::backend::{Backend, ServerTimings};
use crate::job::Endpoint;

/// One finished request.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was sent, since the level started.
    pub sent: Duration,
    /// When it finished, since the level started.
    pub finished: Duration,
    /// Output tokens (0 for embeddings).
    pub tokens: u64,
    /// Inputs in the request (1 except for batched embeddings): each is one job of a run.
    pub inputs: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it failed: the error's kind and message.
    pub error: Option<(&'static str, String)>,
    /// Time to the first token (streamed requests).
    pub first_token: Option<Duration>,
    /// Mean gap between tokens after the first (streamed requests).
    pub inter_token: Option<Duration>,
    /// The server's own timings for it, when given.
    pub server: ServerTimings,
}

/// How long and how precisely to measure a level.
#[derive(Debug, Clone)]
pub struct LevelRule {
    /// Fewest answers counted.
    pub min_answers: usize,
    /// Target half-width of the 95% confidence interval, relative.
    pub ci: f64,
    /// Time cap per level.
    pub max_time: Duration,
}

/// A level's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    /// Requests in flight.
    pub concurrency: usize,
    /// Inputs per request (embeddings batch size; 1 for generation).
    pub batch: usize,
    /// The engine's decode threads at this level (`bench --engine` sweeps them); `None` for a server.
    pub threads: Option<usize>,
    /// Whether the steady-state rule was met (else the time cap ended it).
    pub steady: bool,
    /// Jobs per second (answers; for batched embeddings, inputs).
    pub jobs_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Half-width of the 95% confidence interval of the rate, relative (0.03 = ±3%).
    pub ci_rel: f64,
    /// Answers counted (after the left-out first window).
    pub answers: usize,
    /// Failed requests over all requests at this level.
    pub error_rate: f64,
    /// Failed requests by kind (`timeout`, `reset`, `busy`, ...), with one message as an example.
    pub errors: Vec<ErrorCount>,
    /// End-to-end latency percentiles, milliseconds.
    pub latency_ms: Quantiles,
    /// Time to first token percentiles, milliseconds (streamed generation only).
    pub ttft_ms: Option<Quantiles>,
    /// Inter-token latency percentiles over requests' mean gaps, milliseconds (streamed generation only).
    pub itl_ms: Option<Quantiles>,
    /// The server's own figures.
    pub server: ServerFigures,
    /// Seconds spent at this level.
    pub seconds: f64,
}

/// How many requests failed one way.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    /// The error's kind.
    pub kind: &'static str,
    /// How many.
    pub count: usize,
    /// The first such error's message.
    pub example: String,
}

/// What the server itself reported at a level.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerFigures {
    /// Mean per-request decode speed (llama-server `timings`, Ollama `eval_duration`).
    pub decode_tokens_per_s: Option<f64>,
    /// Mean prompt processing time, ms.
    pub prompt_ms: Option<f64>,
    /// Mean model load time per request, ms (Ollama `load_duration`: non-zero means reloads).
    pub load_ms: Option<f64>,
    /// Running and waiting requests from `/metrics`, where the server serves it.
    pub load: Option<ServerLoad>,
}

/// Latency percentiles.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// What a level's loop reports while it runs.
pub struct Live {
    /// Answers so far.
    pub answers: usize,
    /// Current rate estimate (tokens/s or jobs/s).
    pub rate: f64,
    /// Time left before the cap.
    pub left: Duration,
}

/// Runs `level` workers over `requests` (cycled from `next`) until the rule is met or the cap is reached.
/// Chat and completion requests are streamed, to time their tokens; embeddings are sent whole.
pub async fn measure(
    backend: Arc<dyn Backend>,
    requests: Arc<Vec<Request>>,
    next: Arc<AtomicUsize>,
    level: usize,
    rule: &LevelRule,
    mut progress: impl FnMut(Live),
) -> (LevelReport, Vec<Record>) {
    let sampler = Sampler::start(backend.clone()).await;
    let start = Instant::now();
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..level {
        let (backend, requests, next, records) = (backend.clone(), requests.clone(), next.clone(), records.clone());
        workers.spawn(async move {
            loop {
                let req = &requests[next.fetch_add(1, Ordering::Relaxed) % requests.len()];
                let sent = start.elapsed();
                let mut record = one(backend.as_ref(), req).await;
                record.sent = sent;
                record.finished = start.elapsed();
                records.lock().expect("records lock").push(record);
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (steady, elapsed, snapshot) = loop {
        tick.tick().await;
        let snapshot = records.lock().expect("records lock").clone();
        let elapsed = start.elapsed();
        let stats = Windows::of(&snapshot, level);
        progress(Live { answers: stats.answers, rate: stats.mean, left: rule.max_time.saturating_sub(elapsed) });
        let steady = stats.rates.len() >= 3 && stats.answers >= rule.min_answers && stats.ci_rel() <= rule.ci;
        if steady || elapsed >= rule.max_time {
            break (steady, elapsed, snapshot);
        }
    };
    workers.abort_all();
    let load = match sampler {
        Some(s) => s.finish().await,
        None => None,
    };
    let stats = Windows::of(&snapshot, level);
    let report = report(level, steady, &snapshot, &stats, elapsed, load);
    let records = std::mem::take(&mut *records.lock().expect("records lock"));
    (report, records)
}

/// Sends one request and records what came back (times are filled in by the caller).
async fn one(backend: &dyn Backend, req: &Request) -> Record {
    let mut r = Record {
        sent: Duration::ZERO,
        finished: Duration::ZERO,
        tokens: 0,
        inputs: req.inputs,
        ok: false,
        error: None,
        first_token: None,
        inter_token: None,
        server: ServerTimings::default(),
    };
    let failed = if req.endpoint == Endpoint::Embedding {
        backend.send(req.endpoint, &req.body).await.map(|a| {
            let body: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
            r.server = ServerTimings::of(&body["x_ollama"]);
        })
    } else {
        backend.stream(req.endpoint, &req.body).await.map(|s| {
            r.tokens = s.completion_tokens;
            r.first_token = s.first_token;
            r.inter_token = s.inter_token;
            r.server = s.server;
        })
    }
    .err();
    r.ok = failed.is_none();
    r.error = failed.map(|e| (e.kind(), e.to_string()));
    r
}

/// The windows of a level so far.
struct Windows {
    rates: Vec<f64>,
    job_rates: Vec<f64>,
    answers: usize,
    mean: f64,
}

impl Windows {
    fn of(records: &[Record], level: usize) -> Windows {
        let ok: Vec<&Record> = records.iter().filter(|r| r.ok).collect();
        let mut lat: Vec<f64> = ok.iter().map(|r| (r.finished - r.sent).as_secs_f64()).collect();
        lat.sort_by(f64::total_cmp);
        let median = lat.get(lat.len() / 2).copied().unwrap_or(0.0);
        let width = 1.0f64.max(2.0 * median);
        // The first window is left out: answers to requests sent in it.
        let first_end = ok.get(2 * level).map(|r| r.finished.as_secs_f64()).unwrap_or(f64::MAX).max(width);
        let kept: Vec<&&Record> = ok.iter().filter(|r| r.sent.as_secs_f64() >= first_end).collect();
        let by_tokens = kept.iter().any(|r| r.tokens > 0);
        let (mut rates, mut job_rates) = (Vec::new(), Vec::new());
        let (mut units, mut jobs, mut latency, mut count) = (0.0, 0.0, 0.0, 0usize);
        let mut window_start = first_end;
        for r in &kept {
            let t = r.finished.as_secs_f64();
            units += if by_tokens { r.tokens as f64 } else { r.inputs as f64 };
            jobs += r.inputs as f64;
            latency += (r.finished - r.sent).as_secs_f64();
            count += 1;
            if t - window_start >= width && count >= 2 * level && latency > 0.0 {
                rates.push(units / latency * level as f64);
                job_rates.push(jobs / latency * level as f64);
                (units, jobs, latency, count) = (0.0, 0.0, 0.0, 0);
                window_start = t;
            }
        }
        let mean = if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 };
        Windows { answers: kept.len(), rates, job_rates, mean }
    }

    /// Half-width of the 95% confidence interval of the mean rate, relative to it.
    fn ci_rel(&self) -> f64 {
        ci_rel(&self.rates)
    }
}

/// Relative half-width of the 95% confidence interval of the mean of `xs` (Student's t).
pub fn ci_rel(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 2 {
        return f64::INFINITY;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    const T95: [f64; 10] = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23];
    let t = T95.get(n - 2).copied().unwrap_or(2.0);
    if mean <= 0.0 {
        return f64::INFINITY;
    }
    t * (var / n as f64).sqrt() / mean
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn quantiles(mut xs: Vec<f64>) -> Option<Quantiles> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(Quantiles {
        p50: quantile(&xs, 0.50),
        p90: quantile(&xs, 0.90),
        p95: quantile(&xs, 0.95),
        p99: quantile(&xs, 0.99),
    })
}

fn error_counts(records: &[Record]) -> Vec<ErrorCount> {
    let mut counts: Vec<ErrorCount> = Vec::new();
    for (kind, message) in records.iter().filter_map(|r| r.error.as_ref()) {
        match counts.iter_mut().find(|c| c.kind == *kind) {
            Some(c) => c.count += 1,
            None => counts.push(ErrorCount { kind, count: 1, example: message.clone() }),
        }
    }
    counts
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn report(
    level: usize,
    steady: bool,
    records: &[Record],
    w: &Windows,
    elapsed: Duration,
    load: Option<ServerLoad>,
) -> LevelReport {
    let ok: Vec<&Record> = records.iter().filter(|r| r.ok).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let latency = quantiles(ok.iter().map(|r| ms(r.finished - r.sent)).collect());
    let errors = records.len() - ok.len();
    let jobs = if w.job_rates.is_empty() { 0.0 } else { w.job_rates.iter().sum::<f64>() / w.job_rates.len() as f64 };
    let by_tokens = records.iter().any(|r| r.tokens > 0);
    LevelReport {
        concurrency: level,
        batch: records.first().map_or(1, |r| r.inputs as usize),
        threads: None,
        steady,
        jobs_per_s: jobs,
        output_tokens_per_s: if by_tokens { w.mean } else { 0.0 },
        ci_rel: w.ci_rel(),
        answers: w.answers,
        error_rate: if records.is_empty() { 0.0 } else { errors as f64 / records.len() as f64 },
        errors: error_counts(records),
        latency_ms: latency.unwrap_or(Quantiles { p50: 0.0, p90: 0.0, p95: 0.0, p99: 0.0 }),
        ttft_ms: quantiles(ok.iter().filter_map(|r| r.first_token).map(ms).collect()),
        itl_ms: quantiles(ok.iter().filter_map(|r| r.inter_token).map(ms).collect()),
        server: ServerFigures {
            decode_tokens_per_s: mean(ok.iter().filter_map(|r| r.server.decode_tokens_per_s)),
            prompt_ms: mean(ok.iter().filter_map(|r| r.server.prompt_ms)),
            load_ms: mean(ok.iter().filter_map(|r| r.server.load_ms)),
            load,
        },
        seconds: elapsed.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_interval_shrinks_with_agreement() {
        assert!(ci_rel(&[100.0, 101.0, 99.0, 100.0]) < 0.02);
        assert!(ci_rel(&[50.0, 150.0, 100.0]) > 0.5);
        assert!(ci_rel(&[1.0]).is_infinite());
    }

    #[test]
    fn windows_use_littles_law_and_skip_the_first_window() {
        // 2 in flight, each request 0.5 s, 10 tokens: 40 tokens/s.
        let mut records = Vec::new();
        for i in 0..400u64 {
            let sent = Duration::from_millis(i / 2 * 500);
            records.push(Record {
                sent,
                finished: sent + Duration::from_millis(500),
                tokens: 10,
                inputs: 1,
                ok: true,
                error: None,
                first_token: None,
                inter_token: None,
                server: ServerTimings::default(),
            });
        }
        let w = Windows::of(&records, 2);
        assert!(w.rates.len() >= 3);
        assert!(w.rates.iter().all(|r| (r - 40.0).abs() < 1e-6), "{:?}", w.rates);
        assert!(w.answers < 400, "the first window is left out");
    }
}
