//! Which models are loaded, and which engine a request goes to: the pure
//! model-residency layer above [`crate::engine`].
//!
//! OpenAI mode has one model that is always loaded, like llama-server. Ollama
//! mode follows Ollama's scheduler: a request for a model that is not loaded
//! pays `load_time`; at most `max_loaded` models stay resident and the least
//! recently used *idle* one is evicted to make room (a busy model is never
//! evicted, so such a request waits); a model unloads once it has been idle
//! for the keep-alive of its latest request; and a request whose runner
//! options differ from the loaded ones reloads the model once the running
//! requests have finished.

use std::collections::VecDeque;

use crate::engine::{Engine, EngineParams, Event, Job};

/// Options that, like in Ollama, require restarting the runner when changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunnerOpts {
    pub num_ctx: Option<i64>,
    pub num_batch: Option<i64>,
    pub num_gpu: Option<i64>,
    pub num_thread: Option<i64>,
}

/// How long a model stays loaded after its last request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum KeepAlive {
    /// Simulated seconds (0 unloads as soon as the model is idle).
    For(f64),
    Forever,
}

/// A request for a model.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub model: String,
    pub opts: RunnerOpts,
    pub keep_alive: KeepAlive,
    pub job: Job,
}

/// The pending-request bound was hit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Busy;

/// A resident model as `/api/ps` shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LoadedModel {
    pub name: String,
    /// Simulated time at which it will unload; `None` means never.
    pub expires_at: Option<f64>,
}

#[derive(Debug)]
struct Model {
    name: String,
    engine: Engine,
    opts: RunnerOpts,
    keep_alive: KeepAlive,
    last_used: f64,
}

/// All engines of one server.
#[derive(Debug)]
pub(crate) struct Scheduler {
    params: EngineParams,
    residency: bool,
    load_time: f64,
    max_loaded: usize,
    max_pending: Option<usize>,
    models: Vec<Model>,
    waiting: VecDeque<(Request, f64)>,
    loads: u64,
}

impl Scheduler {
    /// One always-loaded model serving every model name (OpenAI mode).
    pub fn single(params: EngineParams, max_pending: Option<usize>) -> Self {
        let engine = Engine::new(params.clone(), 0.0);
        Scheduler {
            params,
            residency: false,
            load_time: 0.0,
            max_loaded: 1,
            max_pending,
            models: vec![Model {
                name: String::new(),
                engine,
                opts: RunnerOpts::default(),
                keep_alive: KeepAlive::Forever,
                last_used: 0.0,
            }],
            waiting: VecDeque::new(),
            loads: 0,
        }
    }

    /// Ollama-style residency with loads, keep-alive and LRU eviction.
    pub fn residency(params: EngineParams, load_time: f64, max_loaded: usize, max_pending: Option<usize>) -> Self {
        Scheduler {
            residency: true,
            load_time,
            max_loaded: max_loaded.max(1),
            models: Vec::new(),
            ..Scheduler::single(params, max_pending)
        }
    }

    /// Model loads so far (reloads for changed options included).
    pub fn loads(&self) -> u64 {
        self.loads
    }

    /// Hands a request arriving at `now` to its model; call [`Scheduler::advance`] to `now` first.
    pub fn submit(&mut self, req: Request, now: f64) -> Result<(), Busy> {
        let pending: usize = self.models.iter().map(|m| m.engine.pending()).sum::<usize>() + self.waiting.len();
        if self.max_pending.is_some_and(|max| pending >= max) {
            return Err(Busy);
        }
        if !self.residency {
            self.models[0].engine.submit(req.job, now);
            return Ok(());
        }
        let loaded = self.models.iter().any(|m| m.name == req.model);
        if loaded || self.waiting.is_empty() {
            if let Err(req) = self.place(req, now, now) {
                self.waiting.push_back((*req, now));
            }
        } else {
            self.waiting.push_back((req, now));
        }
        Ok(())
    }

    /// Drops a request wherever it is.
    pub fn cancel(&mut self, id: u64) {
        self.waiting.retain(|(r, _)| r.job.id != id);
        for m in &mut self.models {
            if m.engine.cancel(id) {
                return;
            }
        }
    }

    /// Runs every engine up to `now` and settles residency at `now`.
    pub fn advance(&mut self, now: f64, out: &mut Vec<Event>) {
        loop {
            for m in &mut self.models {
                m.engine.advance(now, out);
            }
            if !self.place_waiting(now) {
                break;
            }
        }
        self.models.retain(|m| match m.keep_alive {
            KeepAlive::Forever => true,
            KeepAlive::For(ka) => !(m.engine.is_idle() && m.engine.idle_since() + ka <= now),
        });
    }

    /// The next simulated time at which some engine has work to do.
    pub fn next_event_at(&self) -> Option<f64> {
        self.models.iter().filter_map(|m| m.engine.next_event_at()).min_by(f64::total_cmp)
    }

    /// Resident models (Ollama mode) as of `now`.
    pub fn loaded(&self, now: f64) -> Vec<LoadedModel> {
        if !self.residency {
            return Vec::new();
        }
        self.models
            .iter()
            .map(|m| LoadedModel {
                name: m.name.clone(),
                expires_at: match m.keep_alive {
                    KeepAlive::Forever => None,
                    KeepAlive::For(ka) if m.engine.is_idle() => Some(m.engine.idle_since() + ka),
                    KeepAlive::For(ka) => Some(now + ka),
                },
            })
            .collect()
    }

    /// Places waiting requests in FIFO order; returns whether any was placed.
    fn place_waiting(&mut self, now: f64) -> bool {
        let mut placed = false;
        while let Some((req, arrived)) = self.waiting.pop_front() {
            match self.place(req, arrived, now) {
                Ok(()) => placed = true,
                Err(req) => {
                    self.waiting.push_front((*req, arrived));
                    break;
                }
            }
        }
        placed
    }

    /// Routes a request to its model, loading it if a slot can be had.
    fn place(&mut self, req: Request, arrived: f64, now: f64) -> Result<(), Box<Request>> {
        if let Some(m) = self.models.iter_mut().find(|m| m.name == req.model) {
            if m.opts != req.opts {
                m.engine.request_reload(self.load_time, now);
                m.opts = req.opts;
                self.loads += 1;
            }
            m.engine.submit(req.job, arrived);
            m.keep_alive = req.keep_alive;
            m.last_used = now;
            return Ok(());
        }
        let mut start = now;
        if self.models.len() >= self.max_loaded {
            let lru = self
                .models
                .iter()
                .enumerate()
                .filter(|(_, m)| m.engine.is_idle())
                .min_by(|a, b| a.1.last_used.total_cmp(&b.1.last_used))
                .map(|(i, _)| i);
            let Some(i) = lru else {
                return Err(Box::new(req));
            };
            // The slot was free from the moment the evicted model went idle.
            start = arrived.max(self.models.remove(i).engine.idle_since());
        }
        let mut engine = Engine::loading(self.params.clone(), start, self.load_time);
        engine.submit(req.job, arrived);
        self.loads += 1;
        self.models.push(Model { name: req.model, engine, opts: req.opts, keep_alive: req.keep_alive, last_used: now });
        Ok(())
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
