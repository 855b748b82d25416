//! `/metrics`: the run counters of [`crate::report::render_metrics`], for `serve` (every batch this process ran,
//! plus the batches per status) and for one `run --metrics-listen`.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Shared;
use crate::report::{render_metrics, render_run_metrics, Exposition, RunView};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `view` at `/metrics` on `listener` until the process ends (`run --metrics-listen`).
pub fn spawn_run_metrics(listener: tokio::net::TcpListener, view: RunView) {
    let view = Arc::new(view);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let view = view.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], render_run_metrics(&view)) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("--metrics-listen stopped: {e}");
        }
    });
}

/// `GET /metrics` of `serve`.
pub async fn serve_metrics(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> impl IntoResponse {
    let servers = super::lock(&shared.servers).clone();
    let mut out = Exposition::default();
    render_metrics(&mut out, &shared.stats(), &servers);
    out.family("inflight_batches", "gauge", "Batches in the data directory, by status.");
    for (status, n) in shared.meta.status_counts().unwrap_or_default() {
        out.sample("inflight_batches", &[("status", &status)], n);
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], out.finish())
}
