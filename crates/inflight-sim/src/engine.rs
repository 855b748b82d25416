//! The continuous-batching model of one loaded model, as a pure synchronous
//! state machine over simulated time (seconds as `f64`).
//!
//! Up to `lanes` requests decode together; the rest wait in a FIFO queue. A
//! step produces one token for every active request and lasts
//!
//! ```text
//! step(b) = (base * (1 + max(0, b - knee) / knee) + per_request * b + prefill) * slowdown
//! ```
//!
//! where `prefill` is `prefill_per_token * prompt_tokens` summed over the
//! requests that joined at this step (prompt processing stalls the batch, as
//! in llama.cpp) and `slowdown` is the warm-up or drift factor in force when
//! the step starts. Below the knee the step is nearly flat, so throughput
//! `b / step(b)` grows with the batch; above it the step grows linearly and
//! throughput levels off at `1 / (base / knee + per_request)` tokens/s.
//!
//! [`Engine::advance`] processes every step that ends by `now`, however many,
//! so throughput does not depend on how often the async driver wakes up.

use std::collections::VecDeque;

/// Performance parameters of one engine (simulated seconds).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EngineParams {
    pub lanes: usize,
    pub base_step: f64,
    pub per_request_step: f64,
    pub knee: f64,
    pub prefill_per_token: f64,
    pub warmup_requests: u64,
    pub warmup_factor: f64,
    pub drift_after: Option<f64>,
    pub drift_factor: f64,
}

impl EngineParams {
    /// Decode step duration for a batch of `batch` requests, before slowdowns.
    pub fn step_time(&self, batch: usize) -> f64 {
        let b = batch as f64;
        let knee = self.knee.max(1.0);
        self.base_step * (1.0 + (b - knee).max(0.0) / knee) + self.per_request_step * b
    }
}

/// A request handed to the engine.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub id: u64,
    pub prompt_tokens: u32,
    /// Tokens to generate (already cut by the request's `max_tokens`).
    pub output_tokens: u32,
    /// Whether to report every token as it is produced.
    pub stream: bool,
    /// Simulated seconds of work paid once at admission besides prefill (an embedding request's fixed
    /// overhead plus its per-input cost, [`crate::SimConfig::with_embed_cost`]); 0 otherwise.
    pub service: f64,
}

/// Something the caller must deliver to a waiting request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Event {
    /// Token number `index` (0-based) of a streaming request was produced.
    Token { id: u64, index: u32 },
    /// A request finished.
    Done(Finished),
}

/// Timings of a finished request, in simulated seconds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Finished {
    pub id: u64,
    pub tokens: u32,
    pub arrived: f64,
    pub admitted: f64,
    pub finished: f64,
    /// Part of the wait spent on a model load.
    pub load: f64,
    /// This request's own prompt processing cost.
    pub prefill: f64,
}

#[derive(Debug)]
struct Queued {
    job: Job,
    arrived: f64,
}

#[derive(Debug)]
struct Active {
    job: Job,
    arrived: f64,
    admitted: f64,
    load: f64,
    produced: u32,
}

/// One model's batching engine.
#[derive(Debug)]
pub(crate) struct Engine {
    params: EngineParams,
    /// Simulated time up to which the state is exact.
    clock: f64,
    step_end: Option<f64>,
    /// No step may start before this (the model is loading).
    ready_at: f64,
    load_window: (f64, f64),
    reload_pending: Option<f64>,
    queue: VecDeque<Queued>,
    active: Vec<Active>,
    completed: u64,
    idle_since: f64,
}

impl Engine {
    /// An engine that is ready at `now`.
    pub fn new(params: EngineParams, now: f64) -> Self {
        Self::loading(params, now, 0.0)
    }

    /// An engine whose model takes `load_time` to load, starting at `start`.
    pub fn loading(params: EngineParams, start: f64, load_time: f64) -> Self {
        Engine {
            params,
            clock: start,
            step_end: None,
            ready_at: start + load_time,
            load_window: (start, start + load_time),
            reload_pending: None,
            queue: VecDeque::new(),
            active: Vec::new(),
            completed: 0,
            idle_since: start + load_time,
        }
    }

    /// Queues a job arriving at `now`; call [`Engine::advance`] up to `now` first.
    pub fn submit(&mut self, job: Job, now: f64) {
        if self.step_end.is_none() {
            self.clock = self.clock.max(now);
        }
        self.queue.push_back(Queued { job, arrived: now });
    }

    /// Asks for a reload taking `load_time` once the running requests finish;
    /// queued requests wait for it.
    pub fn request_reload(&mut self, load_time: f64, now: f64) {
        if self.step_end.is_none() {
            self.clock = self.clock.max(now);
        }
        self.reload_pending = Some(load_time);
    }

    /// Drops a request wherever it is; returns whether it was found.
    pub fn cancel(&mut self, id: u64) -> bool {
        if let Some(i) = self.queue.iter().position(|q| q.job.id == id) {
            self.queue.remove(i);
            return true;
        }
        if let Some(i) = self.active.iter().position(|a| a.job.id == id) {
            self.active.swap_remove(i);
            return true;
        }
        false
    }

    /// Requests queued or decoding.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.active.len()
    }

    /// Whether nothing is queued, decoding or loading (the model could be evicted).
    pub fn is_idle(&self) -> bool {
        self.pending() == 0 && self.reload_pending.is_none() && self.ready_at <= self.clock
    }

    /// When the engine last became idle (meaningful when [`Engine::is_idle`]).
    pub fn idle_since(&self) -> f64 {
        self.idle_since
    }

    /// The next simulated time at which [`Engine::advance`] has work to do.
    pub fn next_event_at(&self) -> Option<f64> {
        match self.step_end {
            Some(end) => Some(end),
            // A load in progress is an event even with nothing queued (its request may have been cancelled):
            // the model becomes idle, and evictable, only once it is loaded.
            None if !self.queue.is_empty() || self.reload_pending.is_some() || self.ready_at > self.clock => {
                Some(self.ready_at.max(self.clock))
            }
            None => None,
        }
    }

    /// Runs every step that ends at or before `now`, appending what happened to `out`.
    pub fn advance(&mut self, now: f64, out: &mut Vec<Event>) {
        loop {
            if let Some(end) = self.step_end {
                if end > now {
                    return;
                }
                self.finish_step(end, out);
                continue;
            }
            if self.active.is_empty() {
                if let Some(load_time) = self.reload_pending.take() {
                    self.load_window = (self.clock, self.clock + load_time);
                    self.ready_at = self.clock + load_time;
                }
            }
            if self.ready_at > self.clock {
                if self.ready_at > now {
                    self.clock = now;
                    return;
                }
                self.clock = self.ready_at;
            }
            let prefill = self.admit();
            if self.active.is_empty() {
                self.clock = self.clock.max(now);
                return;
            }
            let slowdown = self.slowdown(self.clock);
            let step = self.params.step_time(self.active.len()) + prefill;
            self.step_end = Some(self.clock + step * slowdown);
        }
    }

    /// Moves queued jobs into free lanes at the current clock; returns their prefill cost.
    fn admit(&mut self) -> f64 {
        if self.reload_pending.is_some() {
            return 0.0;
        }
        let mut prefill = 0.0;
        while self.active.len() < self.params.lanes.max(1) {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let (ls, le) = self.load_window;
            let load = (self.clock.min(le) - q.arrived.max(ls)).max(0.0);
            prefill += f64::from(q.job.prompt_tokens) * self.params.prefill_per_token + q.job.service;
            self.active.push(Active { job: q.job, arrived: q.arrived, admitted: self.clock, load, produced: 0 });
        }
        prefill
    }

    fn finish_step(&mut self, end: f64, out: &mut Vec<Event>) {
        self.clock = end;
        self.step_end = None;
        let per_token = self.params.prefill_per_token;
        let mut i = 0;
        while i < self.active.len() {
            let a = &mut self.active[i];
            if a.produced < a.job.output_tokens {
                if a.job.stream {
                    out.push(Event::Token { id: a.job.id, index: a.produced });
                }
                a.produced += 1;
            }
            if a.produced >= a.job.output_tokens {
                let a = self.active.swap_remove(i);
                self.completed += 1;
                out.push(Event::Done(Finished {
                    id: a.job.id,
                    tokens: a.produced,
                    arrived: a.arrived,
                    admitted: a.admitted,
                    finished: end,
                    load: a.load,
                    prefill: f64::from(a.job.prompt_tokens) * per_token,
                }));
            } else {
                i += 1;
            }
        }
        if self.active.is_empty() && self.queue.is_empty() {
            self.idle_since = end;
        }
    }

    fn slowdown(&self, at: f64) -> f64 {
        let mut f = 1.0;
        if self.completed < self.params.warmup_requests {
            f *= self.params.warmup_factor;
        }
        if self.params.drift_after.is_some_and(|d| at >= d) {
            f *= self.params.drift_factor;
        }
        f
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
