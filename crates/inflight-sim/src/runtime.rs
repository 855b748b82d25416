//! The async driver around the pure [`Scheduler`]: maps wall time to
//! simulated time, wakes when the next step ends, and delivers events to the
//! handlers waiting on them.
//!
//! At high time scales a step is shorter than the timer's 1 ms resolution; the
//! driver then simply finds several steps finished when it wakes, and
//! [`Scheduler::advance`] processes all of them, so simulated throughput is
//! exact whatever the wake-up granularity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::engine::Event;
use crate::scheduler::{Busy, LoadedModel, Request, Scheduler};

/// Shared by the driver task and every handler.
#[derive(Debug)]
pub(crate) struct Runtime {
    inner: Mutex<Inner>,
    wake: Notify,
    epoch: Instant,
    scale: f64,
}

#[derive(Debug)]
struct Inner {
    sched: Scheduler,
    waiters: HashMap<u64, mpsc::UnboundedSender<Event>>,
    scratch: Vec<Event>,
}

impl Inner {
    /// Advances to `now` and hands every event to its request.
    fn settle(&mut self, now: f64) {
        self.sched.advance(now, &mut self.scratch);
        for ev in self.scratch.drain(..) {
            let id = match &ev {
                Event::Token { id, .. } => *id,
                Event::Done(f) => f.id,
            };
            let done = matches!(ev, Event::Done(_));
            if let Some(tx) = self.waiters.get(&id) {
                // A closed channel means the handler is gone; its ticket's
                // drop cancels the request, nothing to do here.
                let _ = tx.send(ev);
            }
            if done {
                self.waiters.remove(&id);
            }
        }
    }
}

/// A submitted request's view of its progress; dropping it early cancels the request.
#[derive(Debug)]
pub(crate) struct Ticket {
    rt: Arc<Runtime>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Event>,
    finished: bool,
}

impl Ticket {
    /// The next token or the completion; `None` only if the server is going away.
    pub async fn next(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await;
        if matches!(ev, Some(Event::Done(_)) | None) {
            self.finished = true;
        }
        ev
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            let mut inner = self.rt.lock();
            inner.waiters.remove(&self.id);
            inner.sched.cancel(self.id);
            drop(inner);
            self.rt.wake.notify_one();
        }
    }
}

impl Runtime {
    /// Wraps a scheduler; simulated time 0 is now.
    pub fn new(sched: Scheduler, scale: f64) -> Arc<Self> {
        Arc::new(Runtime {
            inner: Mutex::new(Inner { sched, waiters: HashMap::new(), scratch: Vec::new() }),
            wake: Notify::new(),
            epoch: Instant::now(),
            scale,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the whole simulated server down.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current simulated time in seconds.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * self.scale
    }

    /// Wall-clock length of a simulated interval.
    pub fn to_wall(&self, sim_secs: f64) -> Duration {
        Duration::from_secs_f64((sim_secs / self.scale).max(0.0))
    }

    /// Queues a request at the current simulated time.
    pub fn submit(self: &Arc<Self>, req: Request) -> Result<Ticket, Busy> {
        let id = req.job.id;
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut inner = self.lock();
            let now = self.now();
            inner.settle(now);
            inner.sched.submit(req, now)?;
            inner.waiters.insert(id, tx);
        }
        self.wake.notify_one();
        Ok(Ticket { rt: self.clone(), id, rx, finished: false })
    }

    /// Model loads so far.
    pub fn loads(&self) -> u64 {
        self.lock().sched.loads()
    }

    /// Resident models and the simulated time of the snapshot.
    pub fn loaded(&self) -> (Vec<LoadedModel>, f64) {
        let mut inner = self.lock();
        let now = self.now();
        inner.settle(now);
        (inner.sched.loaded(now), now)
    }

    /// Runs the model forever; spawn it and abort it with the server.
    pub async fn drive(self: Arc<Self>) {
        loop {
            let next = {
                let mut inner = self.lock();
                inner.settle(self.now());
                inner.sched.next_event_at()
            };
            match next {
                Some(at) => {
                    let deadline = tokio::time::Instant::from_std(self.epoch + self.to_wall(at));
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}
