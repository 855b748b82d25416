//! Named server profiles: scenarios whose best concurrency and throughput are
//! known in advance, so tuning logic can be tested against a right answer.
//!
//! All numbers are simulated time. Step time is
//! `base * (1 + max(0, batch - knee) / knee) + per_request * batch` (see
//! [`crate::engine`]); every prompt token costs `prefill` once. Throughput is
//! for 64-token outputs and 32-token prompts at time scale 1.
//!
//! | profile         | lanes | knee | base   | per request | prefill/token | other                          | peak jobs/s (at)  |
//! |-----------------|-------|------|--------|-------------|---------------|--------------------------------|-------------------|
//! | `serial`        | 1     | 1    | 2 ms   | 0           | 0.1 ms        |                                | 7.6 (1)           |
//! | `lanes4`        | 4     | 4    | 2 ms   | 0           | 0.1 ms        |                                | 28 (>= 4)         |
//! | `batching32`    | 256   | 32   | 8 ms   | 0.1 ms      | 0.1 ms        |                                | 39 (>= 32)        |
//! | `knee256`       | 1024  | 256  | 20 ms  | 0.02 ms     | 0.01 ms       |                                | 151 (>= 256)      |
//! | `warmup`        | 4     | 4    | 2 ms   | 0           | 0.1 ms        | first 20 completions 5x slower | 28 after warmup   |
//! | `drift`         | 4     | 4    | 2 ms   | 0           | 0.1 ms        | 1.3x slower after 180 s        | 28, then 22       |
//! | `bounded-queue` | 4     | 4    | 2 ms   | 0           | 0.1 ms        | max_queue 16, then 503         | 28 (>= 4)         |
//! | `bimodal`       | 256   | 32   | 8 ms   | 0.1 ms      | 0.1 ms        | 90% 16-24 tokens, 10% 180-220  | ~60 (>= 32)       |
//! | `embed`         | 1     | 1    | 0      | 0           | 0             | embeddings: 6 ms a request + 2 ms an input | 500 inputs/s (n → ∞) |
//!
//! `embed` is an embedding server whose per-request work is paid once per request: a request of `n` inputs
//! takes `6 ms + n × 2 ms`, one at a time, so `n` inputs per request give `n / (6 + 2n)` inputs per ms: 125/s
//! one per request, 421/s at 16, 489/s at 128 (the known best of a sweep over inputs per request).
//!
//! Below the knee a step costs about the same whatever the batch, so
//! throughput grows with concurrency; above it the step grows linearly with
//! the batch and throughput stays flat while latency keeps growing. Every
//! profile except `bimodal` draws a fixed 64-token output.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;

use crate::config::{LengthDist, SimConfig};

/// A named scenario; [`SimConfig::profile`] turns it into settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Profile {
    /// One lane: throughput is independent of concurrency.
    Serial,
    /// Four lanes, batching free below four.
    Lanes4,
    /// Many lanes with a knee near 32 in flight.
    Batching32,
    /// A big-GPU vLLM-like server with a knee near 256.
    Knee256,
    /// `lanes4` whose first 20 requests run 5x slower.
    Warmup,
    /// `lanes4` that becomes 30% slower after 180 simulated seconds.
    Drift,
    /// `lanes4` with at most 16 queued requests, answering 503 beyond.
    BoundedQueue,
    /// `batching32` with bimodal output lengths.
    Bimodal,
    /// An embedding server: 6 ms a request plus 2 ms an input, one request at a time.
    Embed,
}

impl Profile {
    /// Every profile, in declaration order.
    pub const ALL: [Profile; 9] = [
        Profile::Serial,
        Profile::Lanes4,
        Profile::Batching32,
        Profile::Knee256,
        Profile::Warmup,
        Profile::Drift,
        Profile::BoundedQueue,
        Profile::Bimodal,
        Profile::Embed,
    ];

    /// The profile's command-line name (`bounded-queue`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Serial => "serial",
            Profile::Lanes4 => "lanes4",
            Profile::Batching32 => "batching32",
            Profile::Knee256 => "knee256",
            Profile::Warmup => "warmup",
            Profile::Drift => "drift",
            Profile::BoundedQueue => "bounded-queue",
            Profile::Bimodal => "bimodal",
            Profile::Embed => "embed",
        }
    }

    /// Overwrites the performance-model settings of `cfg` with this profile's,
    /// keeping server-level settings (API, port, seed, faults, ...).
    pub(crate) fn apply(self, cfg: SimConfig) -> SimConfig {
        let lanes4 = cfg
            .with_lanes(4)
            .with_knee(4)
            .with_base_step(Duration::from_millis(2))
            .with_per_request_step(Duration::ZERO)
            .with_prefill_per_token(Duration::from_micros(100))
            .with_lengths(LengthDist::Fixed(64))
            .with_max_queue(None)
            .with_warmup_requests(0)
            .with_warmup_factor(1.0)
            .with_drift_after(None)
            .with_drift_factor(1.0);
        let batching32 = |c: SimConfig| {
            c.with_lanes(256)
                .with_knee(32)
                .with_base_step(Duration::from_millis(8))
                .with_per_request_step(Duration::from_micros(100))
        };
        match self {
            Profile::Serial => lanes4.with_lanes(1).with_knee(1),
            Profile::Lanes4 => lanes4,
            Profile::Batching32 => batching32(lanes4),
            Profile::Knee256 => lanes4
                .with_lanes(1024)
                .with_knee(256)
                .with_base_step(Duration::from_millis(20))
                .with_per_request_step(Duration::from_micros(20))
                .with_prefill_per_token(Duration::from_micros(10)),
            Profile::Warmup => lanes4.with_warmup_requests(20).with_warmup_factor(5.0),
            Profile::Drift => lanes4.with_drift_after(Some(Duration::from_secs(180))).with_drift_factor(1.3),
            Profile::BoundedQueue => lanes4.with_max_queue(Some(16)),
            Profile::Bimodal => batching32(lanes4).with_lengths(LengthDist::Bimodal {
                short: (16, 24),
                long: (180, 220),
                long_fraction: 0.1,
            }),
            Profile::Embed => lanes4
                .with_lanes(1)
                .with_knee(1)
                .with_base_step(Duration::ZERO)
                .with_prefill_per_token(Duration::ZERO)
                .with_embed_cost(Duration::from_millis(6), Duration::from_millis(2)),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<_> = Profile::ALL.iter().map(|p| p.name()).collect();
            format!("unknown profile '{s}' (expected one of: {})", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_and_clap() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>(), Ok(p));
            assert_eq!(<Profile as ValueEnum>::from_str(p.name(), false).ok(), Some(p));
        }
        assert!("nope".parse::<Profile>().is_err());
    }
}
