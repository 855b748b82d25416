//! A semaphore whose number of permits can change while permits are out.
//!
//! Raising the limit adds permits at once. Lowering it cannot take back permits that are out, so it records a
//! debt: permits returned while the debt is positive are forgotten instead of released. The number in flight
//! therefore converges to the new limit as requests finish, without cancelling any.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The number of requests allowed in flight.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    sem: Arc<Semaphore>,
    limit: AtomicUsize,
    debt: AtomicUsize,
    in_flight: AtomicUsize,
    /// When the permits out were taken (how many at each instant), to tell stalled requests from working ones.
    taken: Mutex<BTreeMap<Instant, usize>>,
}

impl Inner {
    fn taken(&self) -> std::sync::MutexGuard<'_, BTreeMap<Instant, usize>> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Instant {
        let now = Instant::now();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        *self.taken().entry(now).or_default() += 1;
        now
    }
}

/// Permission to have one request in flight; returned on drop.
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<Inner>,
    taken: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        {
            let mut taken = self.inner.taken();
            if let Some(n) = taken.get_mut(&self.taken) {
                *n -= 1;
                if *n == 0 {
                    taken.remove(&self.taken);
                }
            }
        }
        let paid = self.inner.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_ok();
        if let Some(p) = self.permit.take() {
            if paid {
                p.forget();
            }
        }
    }
}

impl Limiter {
    /// A limiter allowing `limit` (at least 1) in flight.
    pub fn new(limit: usize) -> Limiter {
        let limit = limit.max(1);
        Limiter {
            inner: Arc::new(Inner {
                sem: Arc::new(Semaphore::new(limit)),
                limit: AtomicUsize::new(limit),
                debt: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                taken: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Waits for a permit.
    pub async fn acquire(&self) -> Permit {
        let permit = self.inner.sem.clone().acquire_owned().await.expect("the limiter's semaphore is never closed");
        let taken = self.inner.take();
        Permit { permit: Some(permit), inner: self.inner.clone(), taken }
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<Permit> {
        let permit = self.inner.sem.clone().try_acquire_owned().ok()?;
        let taken = self.inner.take();
        Some(Permit { permit: Some(permit), inner: self.inner.clone(), taken })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// Requests holding a permit now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Permits held for longer than `age`: requests stalled, for the controller to count apart from working ones.
    pub fn held_longer_than(&self, age: Duration) -> usize {
        Instant::now().checked_sub(age).map_or(0, |cutoff| self.taken_by(cutoff))
    }

    /// Permits out that were taken at or before `cutoff`.
    fn taken_by(&self, cutoff: Instant) -> usize {
        self.inner.taken().range(..=cutoff).map(|(_, n)| n).sum()
    }

    /// Changes the limit (at least 1). Only the controller calls this, so there is one writer.
    pub fn set_limit(&self, new: usize) {
        let new = new.max(1);
        let old = self.inner.limit.swap(new, Ordering::AcqRel);
        if new == old {
            return;
        }
        if new > old {
            let mut grow = new - old;
            // Cancel outstanding debt first; only the remainder becomes new permits.
            while grow > 0 {
                let debt = self.inner.debt.load(Ordering::Acquire);
                let cancel = debt.min(grow);
                if cancel == 0 {
                    break;
                }
                if self.inner.debt.compare_exchange(debt, debt - cancel, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    grow -= cancel;
                }
            }
            self.inner.sem.add_permits(grow);
        } else if new < old {
            let mut shrink = old - new;
            // Take idle permits away now; the rest is paid back as permits are returned.
            while shrink > 0 {
                match self.inner.sem.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        shrink -= 1;
                    }
                    Err(_) => break,
                }
            }
            self.inner.debt.fetch_add(shrink, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shrinking_takes_effect_as_permits_return() {
        let l = Limiter::new(4);
        let held: Vec<Permit> = futures_lite(&l, 4).await;
        l.set_limit(2);
        assert_eq!(l.limit(), 2);
        drop(held);
        let p: Vec<Permit> = futures_lite(&l, 2).await;
        assert_eq!(l.in_flight(), 2);
        assert!(l.inner.sem.try_acquire().is_err(), "only 2 permits exist after shrinking");
        drop(p);
    }

    #[tokio::test]
    async fn growing_cancels_debt_before_adding() {
        let l = Limiter::new(4);
        let held = futures_lite(&l, 4).await;
        l.set_limit(1); // debt 3
        l.set_limit(3); // debt 1, no new permits
        drop(held); // one forgotten, three released
        assert_eq!(l.inner.sem.available_permits(), 3);
        l.set_limit(5);
        assert_eq!(l.inner.sem.available_permits(), 5);
    }

    #[tokio::test]
    async fn permits_held_long_are_counted_apart() {
        let l = Limiter::new(4);
        let old = futures_lite(&l, 2).await;
        let cutoff = Instant::now();
        while Instant::now() == cutoff {
            std::hint::spin_loop();
        }
        let young = futures_lite(&l, 1).await;
        assert_eq!(l.taken_by(cutoff), 2, "the two taken before the cutoff");
        assert_eq!(l.held_longer_than(Duration::from_secs(3600)), 0);
        drop(old);
        assert_eq!(l.taken_by(cutoff), 0);
        assert_eq!(l.held_longer_than(Duration::ZERO), 1);
        drop(young);
        assert!(l.inner.taken().is_empty(), "every permit returned leaves nothing behind");
    }

    async fn futures_lite(l: &Limiter, n: usize) -> Vec<Permit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(l.acquire().await);
        }
        v
    }
}
