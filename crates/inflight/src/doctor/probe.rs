//! The live probe, bounded in time: a closed loop at 1, 2, 4 and 8 in flight (the same measurement as
//! `inflight bench`, cut short), and for Ollama a few requests spaced apart to see whether the model loads
//! again each time.
//!
//! Rates use Little's law (answers × in-flight ÷ summed latency), which needs only a handful of answers per
//! level: a probe of a few seconds on a slow CPU server still gives a rate at every level.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::http::Getter;
use crate::backend::Backend;
use crate::bench::{measure, LevelRule, Record};
use crate::job::Endpoint;

/// Levels probed.
pub const LEVELS: [usize; 4] = [1, 2, 4, 8];
/// A level within this fraction of the best rate counts as reaching it (the probe is short, so wider than
/// bench's 5%).
pub const BAND: f64 = 0.15;

/// What the probe measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeFacts {
    /// Latency of the first request, left out of the levels (a model load shows here), milliseconds.
    pub first_request_ms: Option<f64>,
    /// Time allowed to each level, seconds.
    pub level_seconds: f64,
    /// One entry per level.
    pub levels: Vec<ProbeLevel>,
    /// The smallest level within the band of the best rate: how many requests the server usefully runs at once.
    pub effective_lanes: Option<usize>,
    /// Ollama: requests spaced apart, and whether each loaded the model again.
    pub spaced: Option<SpacedProbe>,
}

/// One concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeLevel {
    /// Requests in flight.
    pub concurrency: usize,
    /// Answers counted.
    pub answers: usize,
    /// Failed requests.
    pub errors: usize,
    /// Answers per second.
    pub jobs_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Median latency, milliseconds.
    pub latency_p50_ms: f64,
}

/// Requests sent one at a time with a pause between them (Ollama).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpacedProbe {
    /// Pause between requests, seconds.
    pub gap_s: f64,
    /// Each request's figures.
    pub requests: Vec<SpacedRequest>,
}

/// One spaced request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpacedRequest {
    /// Ollama's `load_duration`, milliseconds.
    pub load_ms: f64,
    /// Ollama's `total_duration`, milliseconds.
    pub total_ms: f64,
    /// Seconds until the model unloads, read from `/api/ps` right after the answer (None: not loaded).
    pub expires_in_s: Option<f64>,
}

/// Runs the sweep: one warm-up request, then each level for at most `per_level`.
pub async fn sweep(
    backend: Arc<dyn Backend>,
    requests: Arc<Vec<(Endpoint, String)>>,
    per_level: Duration,
    mut progress: impl FnMut(String),
) -> ProbeFacts {
    let Some((endpoint, body)) = requests.first() else { return ProbeFacts::default() };
    let started = std::time::Instant::now();
    // The first request may load the model; it gets the whole sweep's time, never more.
    let budget = per_level * LEVELS.len() as u32;
    let first = tokio::time::timeout(budget, backend.send(*endpoint, body)).await;
    let first_request_ms = matches!(first, Ok(Ok(_))).then(|| started.elapsed().as_secs_f64() * 1e3);
    let next = Arc::new(AtomicUsize::new(1));
    let rule = LevelRule { min_answers: 40, ci: 0.05, max_time: per_level };
    let mut levels = Vec::new();
    for level in LEVELS {
        progress(format!("probe: {level} in flight for up to {:.0}s", per_level.as_secs_f64()));
        let (_, records) = measure(backend.clone(), requests.clone(), next.clone(), level, &rule, |_| {}).await;
        levels.push(level_of(level, &records));
    }
    let effective_lanes = effective_lanes(&levels);
    ProbeFacts { first_request_ms, level_seconds: per_level.as_secs_f64(), levels, effective_lanes, spaced: None }
}

/// A level's figures from its finished requests.
pub fn level_of(level: usize, records: &[Record]) -> ProbeLevel {
    let mut ok: Vec<&Record> = records.iter().filter(|r| r.ok).collect();
    ok.sort_by_key(|r| r.finished);
    // The first answers waited behind the previous level's requests; leave them out when there are enough.
    if ok.len() >= 3 * level {
        ok.drain(..level);
    }
    let latency: f64 = ok.iter().map(|r| (r.finished - r.sent).as_secs_f64()).sum();
    let per_s = |units: f64| if latency > 0.0 { units * level as f64 / latency } else { 0.0 };
    let mut lat: Vec<f64> = ok.iter().map(|r| (r.finished - r.sent).as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    ProbeLevel {
        concurrency: level,
        answers: ok.len(),
        errors: records.iter().filter(|r| !r.ok).count(),
        jobs_per_s: per_s(ok.len() as f64),
        output_tokens_per_s: per_s(ok.iter().map(|r| r.tokens as f64).sum()),
        latency_p50_ms: lat.get(lat.len() / 2).copied().unwrap_or(0.0),
    }
}

/// The smallest level whose rate is within [`BAND`] of the best; `None` when no level had answers.
pub fn effective_lanes(levels: &[ProbeLevel]) -> Option<usize> {
    let measured: Vec<&ProbeLevel> = levels.iter().filter(|l| l.answers > 0).collect();
    let best = measured.iter().map(|l| l.jobs_per_s).fold(0.0, f64::max);
    if best <= 0.0 {
        return None;
    }
    measured.iter().find(|l| l.jobs_per_s * (1.0 + BAND) >= best).map(|l| l.concurrency)
}

/// Sends `count` short Ollama requests `gap` apart without a `keep_alive`, so the server's own default
/// applies, and reads `load_duration` and `/api/ps` after each.
pub async fn spaced(get: &Getter, model: &str, count: usize, gap: Duration) -> Option<SpacedProbe> {
    let body = json!({"model": model, "prompt": "Say hi.", "stream": false, "options": {"num_predict": 4}});
    let mut requests = Vec::new();
    for i in 0..count {
        if i > 0 {
            // The pause is the probe itself: an idle server is what unloads a model.
            tokio::time::sleep(gap).await;
        }
        let answer = get.post("/api/generate", &body).await?;
        let ms = |key: &str| answer[key].as_f64().unwrap_or(0.0) / 1e6;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let expires_in_s = get.json("/api/ps").await.and_then(|ps| {
            let models = ps["models"].as_array()?.clone();
            let same = |n: &str| n == model || n.strip_suffix(":latest") == Some(model);
            let m = models.iter().find(|m| m["name"].as_str().is_some_and(same))?;
            Some(super::formats::rfc3339_secs(m["expires_at"].as_str()?)? - now.as_secs_f64())
        });
        requests.push(SpacedRequest { load_ms: ms("load_duration"), total_ms: ms("total_duration"), expires_in_s });
    }
    Some(SpacedProbe { gap_s: gap.as_secs_f64(), requests })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(concurrency: usize, jobs_per_s: f64) -> ProbeLevel {
        ProbeLevel { concurrency, answers: 10, errors: 0, jobs_per_s, output_tokens_per_s: 0.0, latency_p50_ms: 0.0 }
    }

    #[test]
    fn effective_lanes_is_where_the_rate_stops_growing() {
        let serial = [level(1, 4.8), level(2, 5.0), level(4, 4.9), level(8, 4.7)];
        assert_eq!(effective_lanes(&serial), Some(1));
        let four = [level(1, 1.0), level(2, 1.9), level(4, 3.8), level(8, 4.0)];
        assert_eq!(effective_lanes(&four), Some(4));
        assert_eq!(effective_lanes(&[]), None);
    }

    #[test]
    fn rates_follow_littles_law() {
        // Two in flight, each answer 0.5 s and 10 tokens: 4 answers/s, 40 tokens/s.
        let records: Vec<Record> = (0..12u64)
            .map(|i| Record {
                sent: Duration::from_millis(i / 2 * 500),
                finished: Duration::from_millis(i / 2 * 500 + 500),
                tokens: 10,
                ok: true,
                server_tokens_per_s: None,
            })
            .collect();
        let l = level_of(2, &records);
        assert_eq!(l.answers, 10, "the first two answers are left out");
        assert!((l.jobs_per_s - 4.0).abs() < 1e-9 && (l.output_tokens_per_s - 40.0).abs() < 1e-9, "{l:?}");
        assert_eq!(l.latency_p50_ms, 500.0);
    }
}
