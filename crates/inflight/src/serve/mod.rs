//! `inflight serve`: OpenAI's Files and Batches APIs over local models. Uploaded files and each batch's object
//! live in the data directory (`meta`: `DIR/serve.db`, files under `DIR/files/`); each batch is an ordinary
//! inflight run with its own state (`DIR/batches/ID/`), run by a [`BatchRunner`] that the command layer gives,
//! so serve shares the run's ingest, dispatch, tuning and exactly-once outputs instead of having its own.
//! Batches run one at a time, first created first (`queue`); a restart resumes the one that was running.
//! Also here: `/metrics` (Prometheus text, for serve and for `run --metrics-listen`) and the dashboard at `/`.

mod auth;
mod batches;
mod dashboard;
mod error;
mod files;
mod ids;
mod meta;
mod metrics;
mod objects;
mod queue;
mod validate;

pub use auth::Keys;
pub use metrics::spawn_run_metrics;
pub use objects::{Batch, BatchError, BatchStatus, BatchUsage, FileObject, RequestCounts};

use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::job::Parser;
use crate::live::StatsSnapshot;
use crate::report::RunView;
use crate::store::Counts;
use meta::Meta;

/// One batch's run, as the command layer does it.
pub struct BatchRun {
    /// The input file.
    pub input: PathBuf,
    /// Where results go (failures beside it, `output::errors_path`; the state beside it too).
    pub output: PathBuf,
    /// Stops the run; it drains, and what is unfinished stays pending in its state.
    pub stop: CancellationToken,
    /// Handed the run's live view once it sends.
    pub watch: Box<dyn FnOnce(RunView) + Send>,
}

/// How a batch's run ended.
pub struct RunEnd {
    /// Its state's counts at the end.
    pub counts: Counts,
    /// Stopped before every job was finished.
    pub interrupted: bool,
}

/// Runs batches: the command layer's one-step run, given a batch's files instead of flags.
#[async_trait::async_trait(?Send)]
pub trait BatchRunner {
    /// Runs (or resumes) `run`; `Err` with a message when the run cannot start or go on (a server that does not
    /// answer, a model no server has, the first requests all refused the same way).
    async fn run(&self, run: BatchRun) -> Result<RunEnd, String>;
}

/// What `serve` needs to start.
pub struct ServeConfig {
    /// The data directory (made if missing).
    pub data: PathBuf,
    /// The accepted API keys.
    pub keys: Keys,
    /// The largest upload, in bytes.
    pub max_upload: u64,
    /// The run's parser, to check input files as the run will read them.
    pub parser: Parser,
    /// The run's longest accepted line.
    pub max_line_bytes: u64,
}

/// Why `serve` cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory.
    #[error("data directory {path}: {source}")]
    Data {
        /// The path at fault.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another process serves the directory.
    #[error("another inflight serve is using the data directory {0}")]
    Locked(String),
    /// The metadata file.
    #[error("metadata {path}: {source}")]
    Meta {
        /// The file.
        path: String,
        /// Why.
        source: rusqlite::Error,
    },
    /// The listener failed.
    #[error("serving: {0}")]
    Http(std::io::Error),
}

/// A point of the running batch's history, sampled every second (the dashboard's chart).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Point {
    /// Seconds since the batch's run began in this process.
    pub t: f64,
    /// Jobs succeeded (all sessions).
    pub done: u64,
    /// Jobs failed (all sessions).
    pub failed: u64,
    /// Completion tokens in this session.
    pub tokens: u64,
    /// Requests in flight.
    pub in_flight: usize,
    /// The concurrency limit.
    pub limit: usize,
}

/// The batch being run now.
struct Running {
    id: String,
    stop: CancellationToken,
    view: Option<RunView>,
    history: VecDeque<Point>,
}

/// What every handler and the queue share.
pub struct Shared {
    meta: Meta,
    data: PathBuf,
    keys: Keys,
    max_upload: u64,
    parser: Parser,
    max_line_bytes: u64,
    wake: Notify,
    running: Mutex<Option<Running>>,
    retired: Mutex<StatsSnapshot>,
    /// The servers of the last batch that sent, for the gauges between batches.
    servers: Mutex<Vec<crate::report::ServerGauge>>,
    shutdown: CancellationToken,
    _lock: File,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn files_dir(&self) -> PathBuf {
        self.data.join("files")
    }

    /// Where the file `id` is kept; `None` for anything but an id [`ids::new`] made.
    fn file_path(&self, id: &str) -> Option<PathBuf> {
        ids::is_valid(ids::FILE, id).then(|| self.files_dir().join(id))
    }

    /// The directory of batch `id`'s run.
    fn batch_dir(&self, id: &str) -> Option<PathBuf> {
        ids::is_valid(ids::BATCH, id).then(|| self.data.join("batches").join(id))
    }

    /// The running batch's counts and usage now, if `id` is running and has started sending.
    fn live_counts(&self, id: &str) -> Option<(RequestCounts, BatchUsage)> {
        let running = lock(&self.running);
        let r = running.as_ref().filter(|r| r.id == id)?;
        let view = r.view.as_ref()?;
        let s = view.stats.snapshot();
        let b = view.before;
        let counts = RequestCounts {
            total: b.total() + b.bad_lines,
            completed: b.done + s.done,
            failed: b.failed + b.bad_lines + s.failed,
        };
        Some((counts, BatchUsage::new(b.prompt_tokens + s.prompt_tokens, b.completion_tokens + s.completion_tokens)))
    }

    /// `batch` with its live counts when it is running.
    fn with_live_counts(&self, mut batch: Batch) -> Batch {
        if let Some((counts, usage)) = self.live_counts(&batch.id) {
            batch.request_counts = counts;
            batch.usage = Some(usage);
        }
        batch
    }

    /// Counters of every batch run by this process, the running one included. Locks `running` before
    /// `retired`, as [`Shared::retire`] does, so a batch is never counted twice or not at all.
    fn stats(&self) -> StatsSnapshot {
        let running = lock(&self.running);
        let mut total = *lock(&self.retired);
        if let Some(view) = running.as_ref().and_then(|r| r.view.as_ref()) {
            total += view.stats.snapshot();
        }
        total
    }

    /// The running batch is over: its counters join the retired ones in the same step.
    fn retire(&self) {
        let mut running = lock(&self.running);
        if let Some(view) = running.take().and_then(|r| r.view) {
            *lock(&self.retired) += view.stats.snapshot();
        }
    }
}

/// Opens the data directory (taking its lock) and the metadata.
fn open(config: ServeConfig, shutdown: CancellationToken) -> Result<Shared, ServeError> {
    let data = config.data;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ServeError::Data { path, source }
    };
    for dir in [data.clone(), data.join("files"), data.join("batches")] {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let lock_path = data.join("serve.lock");
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(ServeError::Locked(data.display().to_string())),
        Err(TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
    }
    remove_partial_uploads(&data.join("files")).map_err(io(&data.join("files")))?;
    let db = data.join("serve.db");
    let meta = Meta::open(&db).map_err(|source| ServeError::Meta { path: db.display().to_string(), source })?;
    Ok(Shared {
        meta,
        data,
        keys: config.keys,
        max_upload: config.max_upload,
        parser: config.parser,
        max_line_bytes: config.max_line_bytes,
        wake: Notify::new(),
        running: Mutex::new(None),
        retired: Mutex::new(StatsSnapshot::default()),
        servers: Mutex::new(Vec::new()),
        shutdown,
        _lock: file,
    })
}

/// Uploads a killed `serve` was receiving (`.upload-ID`, never recorded) are removed at the next start.
fn remove_partial_uploads(files: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(files)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".upload-") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn router(shared: Arc<Shared>) -> Router {
    // Room for the multipart framing around the largest file; the handler counts the file's own bytes.
    let upload_limit = usize::try_from(shared.max_upload).unwrap_or(usize::MAX).saturating_add(64 * 1024);
    Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard.json", get(dashboard::json))
        .route("/metrics", get(metrics::serve_metrics))
        .route("/v1/files", post(files::upload).get(files::list).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::retrieve))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .fallback(unknown_route)
        .with_state(shared)
}

async fn unknown_route(method: axum::http::Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        message: format!("Invalid URL ({method} {})", uri.path()),
        param: None,
        code: None,
    }
}

/// A data directory opened for serving: its lock held, partial uploads removed, the metadata open.
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Opens `config.data` (made if missing), or says why not (another `serve` holds it, a file cannot be
    /// made); `shutdown` stops [`Server::serve`].
    pub fn open(config: ServeConfig, shutdown: CancellationToken) -> Result<Server, ServeError> {
        Ok(Server { shared: Arc::new(open(config, shutdown)?) })
    }

    /// Serves on `listener` until `shutdown`: the API, the dashboard, the metrics, and the queue, which runs
    /// batches through `runner` on the calling task. On shutdown the running batch drains and stays
    /// `in_progress`, to go on at the next start.
    pub async fn serve(self, listener: tokio::net::TcpListener, runner: &dyn BatchRunner) -> Result<(), ServeError> {
        let shared = self.shared;
        let app = router(shared.clone());
        // The HTTP server is a task of its own: a batch's run blocks its thread now and then (ingest,
        // validation), and requests must not wait for that.
        let http = axum::serve(listener, app).with_graceful_shutdown(shared.shutdown.clone().cancelled_owned());
        let http = tokio::spawn(http.into_future());
        queue::work(&shared, runner).await;
        match http.await {
            Ok(served) => served.map_err(ServeError::Http),
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        }
    }
}
