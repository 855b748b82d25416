//! The live probe's sweep, bounded in time: a closed loop at 1, 2, 4 and 8 in flight (the same measurement
//! as `inflight bench`, cut short), while the server's own count of requests it is processing is sampled.
//!
//! Rates use Little's law (answers × in-flight ÷ summed latency), which needs only a handful of answers per
//! level: a probe of a few seconds on a slow CPU server still gives a rate at every level. Rates move when other
//! work shares the machine, so where the server counts its busy slots (llama-server `/slots`, vLLM `/metrics`)
//! that count caps the effective lanes: a server never runs more at once than it says it is running.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{Backend, BusySampler};
use crate::bench::{measure, LevelRule, Record, Request};
use crate::job::Endpoint;

/// Levels probed.
pub const LEVELS: [usize; 4] = [1, 2, 4, 8];

/// What the probe measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeFacts {
    /// Latency of the first request, left out of the levels (a model load shows here), milliseconds.
    pub first_request_ms: Option<f64>,
    /// The levels measured: every requester had at least one answer.
    pub levels: Vec<ProbeLevel>,
    /// Levels skipped or left with too few answers in the time the probe had.
    pub unmeasured: Vec<usize>,
    /// The smallest level within the probe's band of the best rate, never more than the server ran at once: how
    /// many requests the server usefully runs at once (None unless at least two levels were measured).
    pub effective_lanes: Option<usize>,
    /// Ollama: requests spaced apart, and whether each loaded the model again.
    pub spaced: Option<super::reload::SpacedProbe>,
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
    /// The most requests the server said it was processing at once during the level (sampled), when it says.
    pub server_busy_max: Option<u64>,
}

/// How often the busy count is sampled during a level.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Runs the sweep within `budget`: one warm-up request, then each level for as long as
/// [`level_time`] gives it.
pub async fn sweep(
    backend: Arc<dyn Backend>,
    requests: Vec<(Endpoint, String)>,
    budget: Duration,
    busy: Option<BusySampler>,
    mut progress: impl FnMut(String),
) -> ProbeFacts {
    let requests: Arc<Vec<Request>> =
        Arc::new(requests.into_iter().map(|(endpoint, body)| Request { endpoint, body, inputs: 1 }).collect());
    let Some(Request { endpoint, body, .. }) = requests.first() else { return ProbeFacts::default() };
    let started = Instant::now();
    // The first request may load the model; it gets the whole budget, never more.
    let first = tokio::time::timeout(budget, backend.send(*endpoint, body)).await;
    let first_latency = matches!(first, Ok(Ok(_))).then(|| started.elapsed());
    // Unknown until level 1 is measured: the first request may have loaded the model, so it says nothing.
    let mut service = None;
    let next = Arc::new(AtomicUsize::new(1));
    let (mut levels, mut unmeasured) = (Vec::new(), Vec::new());
    for (i, level) in LEVELS.into_iter().enumerate() {
        let left = budget.saturating_sub(started.elapsed());
        let Some(time) = level_time(left, LEVELS.len() - i, level, service) else {
            unmeasured.push(level);
            continue;
        };
        progress(format!("probe: {level} in flight for up to {:.0}s", time.as_secs_f64()));
        let rule = LevelRule { min_answers: 40, ci: 0.05, max_time: time };
        // The sampler's readings are folded as they come, so none is dropped for want of room.
        let sampler = busy.clone().map(|s| {
            let (mut readings, task) = s.spawn();
            let busiest = tokio::spawn(async move {
                let mut most = None;
                while let Some(n) = readings.recv().await {
                    most = most.max(Some(n as u64));
                }
                most
            });
            (task, busiest)
        });
        let (_, records) = measure(backend.clone(), requests.clone(), next.clone(), level, &rule, |_| {}).await;
        let mut l = level_of(level, &records);
        if let Some((task, busiest)) = sampler {
            // Ending the sampler closes its channel, so the fold returns what it saw.
            task.abort();
            l.server_busy_max = busiest.await.ok().flatten();
        }
        // Little's law holds only once every requester has had an answer, and a rate needs a few.
        if l.answers < level.max(MIN_ANSWERS) {
            unmeasured.push(level);
            continue;
        }
        // Per request, were the server serialized: what the next level's time is planned on.
        service = Some(Duration::from_secs_f64(l.latency_p50_ms / 1e3 / level as f64));
        levels.push(l);
    }
    let effective_lanes = effective_lanes(&levels);
    let first_request_ms = first_latency.map(|d| d.as_secs_f64() * 1e3);
    ProbeFacts { first_request_ms, levels, unmeasured, effective_lanes, spaced: None }
}

/// Fewest answers for a level's rate to count.
const MIN_ANSWERS: usize = 3;
/// A level shorter than this measures nothing worth reporting.
const MIN_LEVEL_TIME: Duration = Duration::from_millis(500);
/// Requests each requester should see answered in a level, were the server serialized.
const ANSWERS_PER_REQUESTER: u32 = 3;

/// How long to give `level` with `left` of the budget for `levels_left` levels, when one request alone takes
/// `service` (unknown before level 1): its fair share, stretched (up to all that is left) until each requester
/// could get three answers from a serialized server; `None` when not even one answer each would fit, or its
/// share is under half a second.
pub fn level_time(left: Duration, levels_left: usize, level: usize, service: Option<Duration>) -> Option<Duration> {
    let fair = left / levels_left.max(1) as u32;
    if fair < MIN_LEVEL_TIME {
        return None;
    }
    let Some(service) = service else { return Some(fair) };
    let serialized = service * level as u32;
    if left < serialized * 3 / 2 {
        return None;
    }
    Some(fair.max(serialized * ANSWERS_PER_REQUESTER).min(left))
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
        server_busy_max: None,
    }
}

/// The effective lanes by the one rule of "best" ([`crate::tune::best::effective_lanes`]: the probe's band,
/// capped by the most requests the server said it processed at once), on jobs/s; `None` with fewer than two
/// levels (one shows no trend).
pub fn effective_lanes(levels: &[ProbeLevel]) -> Option<usize> {
    if levels.len() < 2 {
        return None;
    }
    let points: Vec<(usize, f64)> = levels.iter().map(|l| (l.concurrency, l.jobs_per_s)).collect();
    let busy = levels.iter().filter_map(|l| l.server_busy_max).max();
    crate::tune::best::effective_lanes(&points, busy.map(|n| n as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(concurrency: usize, jobs_per_s: f64) -> ProbeLevel {
        ProbeLevel {
            concurrency,
            answers: 10,
            errors: 0,
            jobs_per_s,
            output_tokens_per_s: 0.0,
            latency_p50_ms: 0.0,
            server_busy_max: None,
        }
    }

    #[test]
    fn effective_lanes_is_where_the_rate_stops_growing() {
        let serial = [level(1, 4.8), level(2, 5.0), level(4, 4.9), level(8, 4.7)];
        assert_eq!(effective_lanes(&serial), Some(1));
        let four = [level(1, 1.0), level(2, 1.9), level(4, 3.8), level(8, 4.0)];
        assert_eq!(effective_lanes(&four), Some(4));
        assert_eq!(effective_lanes(&[]), None);
        assert_eq!(effective_lanes(&four[..1]), None, "one level shows no trend");
    }

    #[test]
    fn the_servers_busy_count_caps_a_noisy_rate() {
        // Other work slowed the first level: the rate rises, but the server never ran two at once.
        let mut noisy = [level(1, 0.8), level(2, 7.6)];
        assert_eq!(effective_lanes(&noisy), Some(2));
        noisy[1].server_busy_max = Some(1);
        assert_eq!(effective_lanes(&noisy), Some(1));
    }

    #[test]
    fn slow_servers_get_longer_levels_and_skip_what_does_not_fit() {
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(level_time(s(60).unwrap(), 4, 1, None), s(15), "level 1: its fair share");
        assert_eq!(level_time(s(60).unwrap(), 4, 2, Some(Duration::from_millis(100))), s(15), "a fast server");
        assert_eq!(level_time(s(40).unwrap(), 2, 4, s(2)), s(24), "three answers each at 4 in flight");
        assert_eq!(level_time(s(20).unwrap(), 1, 8, s(1)), s(20), "all that is left");
        assert_eq!(level_time(s(10).unwrap(), 1, 8, s(1)), None, "not one answer each");
        assert_eq!(level_time(Duration::ZERO, 4, 1, None), None, "nothing left");
    }

    #[test]
    fn rates_follow_littles_law() {
        // Two in flight, each answer 0.5 s and 10 tokens: 4 answers/s, 40 tokens/s.
        let records: Vec<Record> = (0..12u64)
            .map(|i| Record {
                sent: Duration::from_millis(i / 2 * 500),
                finished: Duration::from_millis(i / 2 * 500 + 500),
                tokens: 10,
                inputs: 1,
                ok: true,
                error: None,
                first_token: None,
                inter_token: None,
                server: Default::default(),
            })
            .collect();
        let l = level_of(2, &records);
        assert_eq!(l.answers, 10, "the first two answers are left out");
        assert!((l.jobs_per_s - 4.0).abs() < 1e-9 && (l.output_tokens_per_s - 40.0).abs() < 1e-9, "{l:?}");
        assert_eq!(l.latency_p50_ms, 500.0);
    }
}
