//! Sliding-window rates from monotonically growing counters, sampled now and then.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Rate of a counter over the last `span`, from samples of its running total.
pub struct RateWindow {
    span: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// A window over `span`.
    pub fn new(span: Duration) -> RateWindow {
        RateWindow { span, samples: VecDeque::new() }
    }

    /// Records the counter's total at `now`.
    pub fn record(&mut self, now: Instant, total: u64) {
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= self.span {
            self.samples.pop_front();
        }
    }

    /// Units per second over the window; `None` until two samples span some time.
    pub fn rate(&self) -> Option<f64> {
        let (t0, v0) = *self.samples.front()?;
        let (t1, v1) = *self.samples.back()?;
        let dt = t1.duration_since(t0).as_secs_f64();
        (dt > 0.0).then(|| (v1.saturating_sub(v0)) as f64 / dt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_the_span_only() {
        let t = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(10));
        assert_eq!(w.rate(), None);
        w.record(t, 0);
        w.record(t + Duration::from_secs(5), 1000);
        assert_eq!(w.rate(), Some(200.0));
        w.record(t + Duration::from_secs(20), 1100);
        w.record(t + Duration::from_secs(30), 1200);
        assert_eq!(w.rate(), Some(10.0), "samples older than the span are dropped");
    }
}
