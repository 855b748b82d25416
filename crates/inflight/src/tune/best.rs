//! The one rule for "best level": the smallest level whose rate is within a noise band of the best measured,
//! with the server's own count of busy lanes as evidence against levels above it, and the test that tells a
//! serialized server. The run's controller, `inflight bench`'s recommendation and doctor's effective lanes all
//! call these functions, so the three answers differ only in the band and the evidence they are given.
//!
//! Why the smallest level and not the fastest: past the knee more in flight only queues at the server, adding
//! latency and no throughput, and rates within the band of each other are the same rate measured twice.

/// A relative difference treated as noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band(f64);

impl Band {
    /// The run's and bench's band: a level measured until its rate is steady moves about this much between
    /// runs on the same server.
    pub const RUN: Band = Band(0.05);
    /// Doctor's band: its probe gives each level only seconds (a handful of answers), so its rates move three
    /// times as much, and a 5% band would call noise a gain.
    pub const PROBE: Band = Band(0.15);

    /// A band of `fraction` (0.05 is 5%).
    pub fn new(fraction: f64) -> Band {
        Band(fraction)
    }

    /// The band as a fraction.
    pub fn fraction(self) -> f64 {
        self.0
    }

    /// The run's band measured from its own levels: the median of their windows' [`spread`]s, never below
    /// `floor` (noise too small to measure still moves a rate between runs) nor above [`Band::PROBE`] (wider, and
    /// every level would be "the same rate"). A server whose windows move more than the fixed band between one
    /// another would otherwise have noise read as gains; the median, so that one disturbed level does not widen
    /// the band for all.
    pub fn measured(floor: Band, spreads: impl IntoIterator<Item = f64>) -> Band {
        let mut spreads: Vec<f64> = spreads.into_iter().filter(|s| s.is_finite()).collect();
        if spreads.is_empty() {
            return floor;
        }
        spreads.sort_by(f64::total_cmp);
        let median = spreads[spreads.len() / 2];
        Band(median.clamp(floor.0, Band::PROBE.0.max(floor.0)))
    }

    /// Whether `rate` is within the band below `best`: as good as it, as far as the noise lets one tell.
    pub fn within(self, rate: f64, best: f64) -> bool {
        rate >= best * (1.0 - self.0)
    }

    /// Whether `rate` is clearly above `than`: their bands do not overlap, so noise in both measurements together
    /// cannot explain the difference.
    pub fn clearly_above(self, rate: f64, than: f64) -> bool {
        rate * (1.0 - self.0) > than * (1.0 + self.0)
    }
}

/// How far one level's window rates stray from their middle, as a fraction of it: `(max - min) / (max + min)`,
/// half the range over the mid-range. 0 for fewer than two windows (one window shows no spread).
pub fn spread(rates: &[f64]) -> f64 {
    let (lo, hi) = rates.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    if rates.len() < 2 || hi + lo <= 0.0 {
        return 0.0;
    }
    (hi - lo) / (hi + lo)
}

/// A busy count of 0 says nothing: the server was sampled between requests, not seen running none.
fn evidence(busy: Option<usize>) -> Option<usize> {
    busy.filter(|&n| n > 0)
}

/// The position in `points` (level, rate) of the smallest level whose rate is within `band` of the best rate
/// (the first of equal levels, in the slice's order); `None` for no points.
///
/// `busy`, the most requests the server itself reported processing at once while the levels ran (llama-server
/// slots busy, vLLM running), caps the answer: the server never ran more, so levels above it only queue, unless
/// one of them is clearly faster ([`Band::clearly_above`]) than the best level at or below the cap (it may
/// hide the client's round trips, or the sampling missed a peak). Capped, the answer is the smallest level at or
/// below the cap within the band of the best there.
pub fn pick(points: &[(usize, f64)], band: Band, busy: Option<usize>) -> Option<usize> {
    let best = best_rate(points, |_| true)?;
    let uncapped = smallest_within(points, band, best, |_| true);
    let Some(cap) = evidence(busy) else { return uncapped };
    let (Some(below), Some(above)) = (best_rate(points, |l| l <= cap), best_rate(points, |l| l > cap)) else {
        return uncapped;
    };
    if band.clearly_above(above, below) {
        return uncapped;
    }
    smallest_within(points, band, below, |l| l <= cap)
}

/// The best rate among the points whose level `keep` accepts.
fn best_rate(points: &[(usize, f64)], keep: impl Fn(usize) -> bool) -> Option<f64> {
    points.iter().filter(|(l, _)| keep(*l)).map(|(_, r)| *r).reduce(f64::max)
}

/// The position of the smallest level `keep` accepts whose rate is within `band` of `best`.
fn smallest_within(points: &[(usize, f64)], band: Band, best: f64, keep: impl Fn(usize) -> bool) -> Option<usize> {
    let mut found: Option<usize> = None;
    for (i, &(level, rate)) in points.iter().enumerate() {
        let smaller = match found {
            Some(f) => level < points[f].0,
            None => true,
        };
        if smaller && keep(level) && band.within(rate, best) {
            found = Some(i);
        }
    }
    found
}

/// The level [`pick`] chooses.
pub fn best_level(points: &[(usize, f64)], band: Band, busy: Option<usize>) -> Option<usize> {
    pick(points, band, busy).map(|i| points[i].0)
}

/// Doctor's effective lanes: [`best_level`] in the probe's band, and never more than the server ran at once.
/// Lanes are the server's count, not a level to send: a level above the busy count may be faster (the client's
/// round trips hidden), but other work on the machine never makes a one-slot server run two.
pub fn effective_lanes(points: &[(usize, f64)], busy: Option<usize>) -> Option<usize> {
    let level = best_level(points, Band::PROBE, busy)?;
    Some(evidence(busy).map_or(level, |b| level.min(b)))
}

/// Throughput flat while latency at the top level grows with the level by at least this share of a serial
/// server's growth (`level ×`): client round trips and uneven lengths keep a real serial server below `level ×`.
const SERIAL_LATENCY_SHARE: f64 = 0.6;
/// The best rate at most this many times the rate at 1 in flight is "flat": a serial server idles between
/// requests at 1 in flight (the client's round trip), so 2 in flight can look somewhat faster.
const SERIAL_FLAT: f64 = 1.5;
/// Bench looks for the latency growth at 4 in flight or more: at 2 the test asks only 1.2× the latency, which a
/// busy client alone can cause. (The controller tests the level where its climb stopped.)
pub const SERIAL_EVIDENCE_LEVEL: usize = 4;

/// One measured level as the serialized test reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Requests in flight.
    pub level: usize,
    /// Its rate (any unit, the same for every level).
    pub rate: f64,
    /// Its typical latency (any unit, the same for every level).
    pub latency: f64,
}

/// The serialized-server test: the best rate is flat against the rate at 1 in flight while latency at `top`
/// grows roughly in proportion to its level. What gives a serial server away is the latency: each request
/// waits for all those ahead of it.
pub fn serialized(one: Measured, best_rate: f64, top: Measured) -> bool {
    serialized_with(one, best_rate, top, None)
}

/// [`serialized`], with the most requests the server reported busy at once while the levels ran (`busy`): a
/// server seen with two or more in flight (`top`) and never running two is serialized by its own count,
/// whatever the rates say. Noise on a shared machine, or a slow first level, can hide the flat rate or the
/// latency's growth; neither makes one slot two, and a second request in flight that hid the client's round
/// trip (so rates were not flat) still ran one at a time.
pub fn serialized_with(one: Measured, best_rate: f64, top: Measured, busy: Option<usize>) -> bool {
    let flat = best_rate <= one.rate * SERIAL_FLAT;
    let latency_grew = top.latency >= one.latency * SERIAL_LATENCY_SHARE * top.level as f64;
    let ran_one = top.level >= 2 && evidence(busy) == Some(1);
    (flat && latency_grew) || ran_one
}

#[cfg(test)]
#[path = "best_tests.rs"]
mod tests;
