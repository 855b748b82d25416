//! Several GGUF models behind one backend: the embedded engine for workflows whose steps name GGUF files.
//!
//! A request's `model` names its file. As many models stay loaded as fit in the memory budget (weights plus
//! each model's KV cache, see [`fit`]); asking for one more unloads the one used least recently once its
//! requests have finished. The request that waited for a load reports it with its answer (as Ollama reports
//! `load_duration`), so the workflow scheduler measures a load as the model switch it is and batches steps
//! around it, as it does for a server that holds one model at a time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use inflight_engine::EngineConfig;
use serde_json::Value;
use tokio::sync::{Mutex, Notify};

use super::engine::refused;
use super::{Answer, Api, Backend, BackendError, EngineBackend, ServerInfo, ServerKind, Streamed};
use crate::code::ErrorCode;
use crate::job::Endpoint;

/// The least KV cache worth loading a model for: below it, the models are loaded one at a time.
const MIN_KV_BYTES: u64 = 256 << 20;

/// How many models fit at once and the KV bytes each loaded model gets, for weights of `sizes` bytes in a
/// budget of `budget` bytes: the most models such that the largest of them, each with at least
/// [`MIN_KV_BYTES`] of cache, fit; at least one (a model too large for the budget still runs, alone, on what
/// is left, and its jobs that do not fit say so).
pub fn fit(sizes: &[u64], budget: u64) -> (usize, u64) {
    let mut largest = sizes.to_vec();
    largest.sort_unstable_by(|a, b| b.cmp(a));
    let mut at_once = 1;
    for k in 1..=largest.len() {
        let weights: u64 = largest[..k].iter().sum();
        if weights + k as u64 * MIN_KV_BYTES <= budget {
            at_once = k;
        }
    }
    let weights: u64 = largest.iter().take(at_once).sum();
    let kv = budget.saturating_sub(weights) / at_once as u64;
    (at_once, kv.max(MIN_KV_BYTES))
}

/// The memory budget when the user sets none: what is available now, less a margin for everything else
/// (a tenth, at least 1 GiB).
pub fn default_budget() -> u64 {
    let available = inflight_engine::topology::available_memory().unwrap_or(4 << 30);
    available.saturating_sub((available / 10).max(1 << 30)).max(MIN_KV_BYTES)
}

/// A loaded model.
struct Resident {
    model: String,
    engine: Arc<EngineBackend>,
    /// Requests using it now.
    busy: Arc<AtomicUsize>,
    used: Instant,
}

/// Counts a request on its model until dropped; the last one out wakes a load waiting for room.
struct Busy {
    count: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// The engine for many models.
pub struct EnginePool {
    /// Each model as the steps name it, and its file.
    files: HashMap<String, PathBuf>,
    /// The settings every model is loaded with (its `model` and `memory` set per load).
    config: EngineConfig,
    at_once: usize,
    kv_memory: u64,
    loaded: Mutex<Vec<Resident>>,
    /// The threads each model measured at its first load: a reload takes them instead of measuring again.
    threads: std::sync::Mutex<HashMap<String, usize>>,
    idle: Arc<Notify>,
    loads: AtomicU64,
}

impl EnginePool {
    /// A pool for `files` (model name as the steps write it, and its file) in `budget` bytes. Checks every
    /// file and loads as many models as fit, in the order given, so that a bad file stops the run before
    /// anything is sent.
    pub async fn open(files: Vec<(String, PathBuf)>, config: EngineConfig, budget: u64) -> Result<Self, String> {
        for (_, path) in &files {
            inflight_engine::check_file(path).map_err(|e| e.to_string())?;
        }
        let sizes: Vec<u64> = files.iter().map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).collect();
        let (at_once, kv_memory) = fit(&sizes, budget);
        let pool = EnginePool {
            files: files.iter().cloned().collect(),
            config,
            at_once,
            kv_memory,
            loaded: Mutex::new(Vec::new()),
            threads: std::sync::Mutex::new(HashMap::new()),
            idle: Arc::new(Notify::new()),
            loads: AtomicU64::new(0),
        };
        for (model, _) in files.iter().take(at_once) {
            pool.acquire(model).await.map_err(|e| e.to_string())?;
        }
        Ok(pool)
    }

    /// How many models are kept loaded at once.
    pub fn at_once(&self) -> usize {
        self.at_once
    }

    /// Models loaded so far, the first loads included.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The engine for `model`, loading it (and unloading the least recently used idle model to make room)
    /// when it is not loaded; with the time the load took, if this call loaded it.
    async fn acquire(&self, model: &str) -> Result<(Arc<EngineBackend>, Busy, Option<Duration>), BackendError> {
        let Some(path) = self.files.get(model) else {
            return Err(refused(
                ErrorCode::NotFound,
                format!("model {model:?} is not one of the workflow's GGUF files"),
            ));
        };
        loop {
            let mut loaded = self.loaded.lock().await;
            if let Some(r) = loaded.iter_mut().find(|r| r.model == model) {
                r.used = Instant::now();
                r.busy.fetch_add(1, Ordering::AcqRel);
                let busy = Busy { count: r.busy.clone(), idle: self.idle.clone() };
                return Ok((r.engine.clone(), busy, None));
            }
            if loaded.len() >= self.at_once {
                let idle = loaded.iter().enumerate().filter(|(_, r)| r.busy.load(Ordering::Acquire) == 0);
                match idle.min_by_key(|(_, r)| r.used).map(|(i, _)| i) {
                    Some(i) => {
                        let gone = loaded.remove(i);
                        tracing::info!(model = %gone.model, "unloading a model to make room");
                        // Stopping the engine joins its worker thread: not on the async threads.
                        let _ = tokio::task::spawn_blocking(move || drop(gone)).await;
                    }
                    None => {
                        // Every loaded model is at work: wait until one's last request is done.
                        let notified = self.idle.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        drop(loaded);
                        notified.await;
                        continue;
                    }
                }
            }
            let started = Instant::now();
            let mut config = self.config.clone();
            config.model = path.clone();
            config.memory = Some(self.kv_memory);
            let measured = self.threads.lock().expect("threads lock").get(model).copied();
            config.threads = config.threads.or(measured);
            tracing::info!(model, "loading a model");
            let engine = EngineBackend::load(config).await.map_err(|m| refused(ErrorCode::NotFound, m))?;
            self.threads.lock().expect("threads lock").insert(model.to_owned(), engine.stats().threads);
            self.loads.fetch_add(1, Ordering::Relaxed);
            let r = Resident {
                model: model.to_owned(),
                engine: Arc::new(engine),
                busy: Arc::new(AtomicUsize::new(1)),
                used: Instant::now(),
            };
            let out = (r.engine.clone(), Busy { count: r.busy.clone(), idle: self.idle.clone() });
            loaded.push(r);
            return Ok((out.0, out.1, Some(started.elapsed())));
        }
    }

    /// The engine a request body's `model` names.
    async fn engine_for(&self, body: &str) -> Result<(Arc<EngineBackend>, Busy, Option<Duration>), BackendError> {
        let body: Value = serde_json::from_str(body).map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
        let model = body["model"].as_str().ok_or_else(|| refused(ErrorCode::BadRequest, "no `model`".into()))?;
        self.acquire(model).await
    }
}

#[async_trait]
impl Backend for EnginePool {
    async fn send(&self, endpoint: Endpoint, body: &str) -> Result<Answer, BackendError> {
        let (engine, busy, load) = self.engine_for(body).await?;
        let answer = engine.send(endpoint, body).await;
        // The engine before the count: a model unloaded as soon as it is idle then stops off this task.
        drop(engine);
        drop(busy);
        Ok(Answer { load, ..answer? })
    }

    async fn stream(&self, endpoint: Endpoint, body: &str) -> Result<Streamed, BackendError> {
        let (engine, busy, _) = self.engine_for(body).await?;
        let streamed = engine.stream(endpoint, body).await;
        drop(engine);
        drop(busy);
        streamed
    }

    async fn metrics(&self) -> Option<String> {
        None
    }

    async fn probe(&self) -> Result<ServerInfo, BackendError> {
        let mut models: Vec<String> = self.files.keys().cloned().collect();
        models.sort();
        Ok(ServerInfo {
            description: format!("embedded engine: {} GGUF models, {} loaded at once", models.len(), self.at_once),
            models,
            kind: ServerKind::Engine { sequences: self.config.sequences },
            identity: None,
            // Loaded on demand, as many at once as fit: the scheduler's own switches say which.
            loaded: None,
        })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn api(&self) -> Api {
        Api::Openai
    }

    fn url(&self) -> &str {
        "engine"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn as_many_models_stay_loaded_as_fit_with_a_useful_cache_each() {
        // Two 100 MB models in 8 GiB: both, with the rest shared as cache.
        let (n, kv) = fit(&[100 * M, 100 * M], 8192 * M);
        assert_eq!(n, 2);
        assert_eq!(kv, (8192 - 200) * M / 2);
        // In 500 MB only one fits beside a useful cache: models load in turn.
        assert_eq!(fit(&[100 * M, 100 * M], 500 * M), (1, 400 * M));
        // The largest models decide (any of them may be the ones loaded together).
        assert_eq!(fit(&[3000 * M, 100 * M, 200 * M], 3500 * M).0, 1);
        assert_eq!(fit(&[3000 * M, 100 * M, 200 * M], 3800 * M).0, 2);
        assert_eq!(fit(&[3000 * M, 100 * M, 200 * M], 4100 * M).0, 3);
        // A model larger than the budget still runs alone, with the least cache.
        assert_eq!(fit(&[900 * M], 500 * M), (1, MIN_KV_BYTES));
    }
}
