//! The dashboard: one static page (`dashboard.html`, inline script, no external assets) that polls
//! `/dashboard.json` every second: the queue of batches with progress, rate, ETA and errors, and the running
//! batch's throughput and concurrency over time. It shows batch ids, statuses and counts of every key, never
//! keys, file names or metadata.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::Json;
use serde::Serialize;

use super::objects::BatchStatus;
use super::{lock, Point, Shared};

/// Batches the dashboard lists.
const SHOWN: u64 = 50;
/// The window the rate is measured over, in seconds.
const RATE_WINDOW_S: f64 = 10.0;

/// `GET /`.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// One batch in the dashboard's queue.
#[derive(Debug, Serialize)]
pub struct Row {
    id: String,
    status: BatchStatus,
    created_at: i64,
    total: u64,
    completed: u64,
    failed: u64,
    errors: usize,
    /// Jobs per second over the last seconds (running batch only).
    rate: Option<f64>,
    /// Seconds left at that rate.
    eta_s: Option<f64>,
}

/// The running batch's chart.
#[derive(Debug, Serialize)]
pub struct Chart {
    id: String,
    points: Vec<Point>,
}

/// What `/dashboard.json` answers.
#[derive(Debug, Serialize)]
pub struct Board {
    batches: Vec<Row>,
    running: Option<Chart>,
}

/// Jobs per second between the last point and the one about [`RATE_WINDOW_S`] before it.
fn rate(points: &[Point]) -> Option<f64> {
    let last = points.last()?;
    let first = points.iter().find(|p| last.t - p.t <= RATE_WINDOW_S)?;
    let dt = last.t - first.t;
    (dt > 0.0).then(|| (last.done + last.failed - first.done - first.failed) as f64 / dt)
}

/// `GET /dashboard.json`.
pub async fn json(State(shared): State<Arc<Shared>>) -> Json<Board> {
    let running =
        lock(&shared.running).as_ref().map(|r| Chart { id: r.id.clone(), points: r.history.iter().copied().collect() });
    let batches = shared.meta.recent_batches(SHOWN).unwrap_or_default();
    let rows = batches
        .into_iter()
        .map(|b| {
            let b = shared.with_live_counts(b);
            let c = b.request_counts;
            let rate = running.as_ref().filter(|r| r.id == b.id).and_then(|r| rate(&r.points));
            let left = c.total.saturating_sub(c.completed + c.failed) as f64;
            let eta_s = rate.filter(|r| *r > 0.0).map(|r| left / r);
            let errors = b.errors.as_ref().map_or(0, |e| e.data.len());
            Row {
                id: b.id,
                status: b.status,
                created_at: b.created_at,
                total: c.total,
                completed: c.completed,
                failed: c.failed,
                errors,
                rate,
                eta_s,
            }
        })
        .collect();
    Json(Board { batches: rows, running })
}
