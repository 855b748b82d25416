//! `inflight-sim`: a simulated LLM inference server for the tests and
//! benchmarks of `inflight`.
//!
//! It speaks the OpenAI-compatible API (llama-server, vLLM) or Ollama's API,
//! generates fake text at a pace set by a continuous-batching performance
//! model ([`Profile`] lists the scenarios), and can inject faults (HTTP 500,
//! 503 with `Retry-After`, connection resets, stalls, truncated bodies) so
//! that retry logic and throughput tuning can be tested against known answers.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use inflight_sim::{Profile, SimConfig, SimServer};
//! let server = SimServer::start(SimConfig::profile(Profile::Lanes4).with_time_scale(10.0)).await?;
//! println!("{}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod app;
mod config;
mod engine;
mod faults;
mod ollama;
mod openai;
mod profile;
mod proxy;
mod runtime;
mod scheduler;
mod server;
mod stats;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Api, Faults, LengthDist, SimConfig};
pub use profile::Profile;
pub use proxy::{FaultProxy, ProxyConfig, ProxyFault, ProxyStats};
pub use stats::SimStats;

/// A running simulated server on 127.0.0.1.
///
/// Dropping it stops it too, but only [`SimServer::shutdown`] waits until the
/// port is free again.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    app: Arc<app::App>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    driver: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds 127.0.0.1 on the configured port (with `SO_REUSEADDR`) and
    /// serves in background tasks of the current tokio runtime.
    pub async fn start(cfg: SimConfig) -> std::io::Result<SimServer> {
        let listener = server::bind(cfg.port)?;
        let addr = listener.local_addr()?;
        let api = cfg.api;
        let app = app::App::new(cfg);
        let driver = app.runtime.clone().map(|rt| tokio::spawn(rt.drive()));
        let router = match api {
            Api::OpenAi => openai::router(app.clone()),
            Api::Ollama => ollama::router(app.clone()),
        };
        let counted = app.clone();
        let stats = axum::routing::get(move || async move { axum::Json(counted.stats()) });
        let router = app::with_auth(router.route("/sim/stats", stats), app.clone());
        let (stop, stopped) = watch::channel(false);
        let accept = tokio::spawn(server::accept_loop(listener, router, stopped));
        Ok(SimServer { addr, app, stop, accept, driver })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.app.stats()
    }

    /// Stops listening and resets every open connection at once, as if the
    /// server process died; returns when the port can be bound again.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.accept).await;
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(driver) = &self.driver {
            driver.abort();
        }
    }
}
