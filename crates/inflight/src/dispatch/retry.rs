//! Backoff between attempts: exponential with full jitter, never shorter than the server's `Retry-After`.

use std::time::Duration;

use rand::Rng;

const BASE: Duration = Duration::from_millis(250);
const CAP: Duration = Duration::from_secs(30);

/// The delay before attempt `attempt + 1`, after `attempt` (>= 1) failures.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(CAP);
    let jittered = ceiling.mul_f64(rand::rng().random_range(0.5..=1.0));
    match retry_after {
        Some(ra) => jittered.max(ra.min(Duration::from_secs(300))),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        for _ in 0..100 {
            let first = backoff(1, None);
            assert!(first >= BASE / 2 && first <= BASE, "{first:?}");
            assert!(backoff(30, None) <= CAP);
            assert!(backoff(3, None) >= BASE * 2);
        }
    }

    #[test]
    fn honors_retry_after() {
        assert!(backoff(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }
}
