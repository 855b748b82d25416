//! `/v1/batches`: create (queued, first in first out), list, retrieve (with live counts while it runs), cancel.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::auth::Owner;
use super::error::ApiError;
use super::files::page;
use super::ids;
use super::objects::{now_s, Batch, BatchStatus, Page, RequestCounts};
use super::Shared;

/// The endpoints a batch may name: the ones inflight sends to.
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// The body of `POST /v1/batches`.
#[derive(Debug, Deserialize)]
pub struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

fn check_metadata(metadata: &Option<serde_json::Map<String, serde_json::Value>>) -> Result<(), ApiError> {
    let Some(m) = metadata else { return Ok(()) };
    let fits = m.len() <= 16
        && m.iter().all(|(k, v)| k.chars().count() <= 64 && v.as_str().is_some_and(|s| s.chars().count() <= 512));
    match fits {
        true => Ok(()),
        false => Err(ApiError::invalid(
            Some("metadata"),
            "metadata holds at most 16 pairs, keys of up to 64 characters, string values of up to 512",
        )),
    }
}

/// `POST /v1/batches`: checks the request and queues the batch (its input is checked when its turn comes).
pub async fn create(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    body: Result<Json<CreateBatch>, JsonRejection>,
) -> Result<Json<Batch>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::invalid(None, e.body_text()))?;
    if !ENDPOINTS.contains(&req.endpoint.as_str()) {
        return Err(ApiError::invalid(
            Some("endpoint"),
            format!("endpoint {:?} is not supported; use one of {}", req.endpoint, ENDPOINTS.join(", ")),
        ));
    }
    if req.completion_window.trim().is_empty() {
        return Err(ApiError::invalid(Some("completion_window"), "completion_window must not be empty (e.g. \"24h\")"));
    }
    check_metadata(&req.metadata)?;
    match shared.meta.file(&owner, &req.input_file_id)? {
        Some(f) if f.purpose == "batch" => {}
        Some(_) => return Err(ApiError::invalid(Some("input_file_id"), "the input file's purpose must be \"batch\"")),
        None => {
            return Err(ApiError::invalid(Some("input_file_id"), format!("No such file: {}", req.input_file_id)));
        }
    }
    let batch = Batch {
        id: ids::new(ids::BATCH),
        object: "batch".into(),
        endpoint: req.endpoint,
        errors: None,
        input_file_id: req.input_file_id,
        completion_window: req.completion_window,
        status: BatchStatus::Validating,
        output_file_id: None,
        error_file_id: None,
        created_at: now_s(),
        in_progress_at: None,
        expires_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        request_counts: RequestCounts::default(),
        metadata: req.metadata,
        usage: None,
    };
    shared.meta.insert_batch(&owner, &batch)?;
    shared.wake.notify_one();
    Ok(Json(batch))
}

/// The query of `GET /v1/batches`.
#[derive(Debug, Deserialize)]
pub struct ListBatches {
    after: Option<String>,
    limit: Option<u64>,
}

/// `GET /v1/batches`: newest first; `after`, `limit` (1 to 100, default 20).
pub async fn list(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ListBatches>, QueryRejection>,
) -> Result<Json<Page<Batch>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(None, e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(Some("limit"), "limit must be between 1 and 100"));
    }
    let rows = shared.meta.batches(&owner, q.after.as_deref(), limit + 1)?;
    let rows = rows.into_iter().map(|b| shared.with_live_counts(b)).collect();
    Ok(Json(page(rows, limit, |b: &Batch| b.id.clone())))
}

fn owned_batch(shared: &Shared, owner: &str, id: &str) -> Result<Batch, ApiError> {
    let batch = shared.meta.batch(owner, id)?.ok_or_else(|| ApiError::not_found("batch", id))?;
    Ok(shared.with_live_counts(batch))
}

/// `GET /v1/batches/{id}`.
pub async fn retrieve(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    Ok(Json(owned_batch(&shared, &owner, &id)?))
}

/// `POST /v1/batches/{id}/cancel`: a batch that has not begun sending is cancelled at once; a running one is
/// `cancelling` while its requests in flight finish, then `cancelled` with what finished in its output files.
pub async fn cancel(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    let batch = owned_batch(&shared, &owner, &id)?;
    if batch.status.is_final() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!("Cannot cancel a batch with status '{}'.", batch.status.name()),
            param: None,
            code: None,
        });
    }
    let running = super::lock(&shared.running).as_ref().filter(|r| r.id == id).map(|r| r.stop.clone());
    let now = now_s();
    let changed = shared.meta.update_batch(&id, |b| {
        if b.status.is_final() || b.status == BatchStatus::Cancelling {
            return;
        }
        b.cancelling_at = Some(now);
        if running.is_some() || b.in_progress_at.is_some() {
            b.status = BatchStatus::Cancelling;
        } else {
            b.status = BatchStatus::Cancelled;
            b.cancelled_at = Some(now);
        }
    })?;
    if let Some(stop) = running {
        stop.cancel();
    }
    let batch = changed.ok_or_else(|| ApiError::not_found("batch", &id))?;
    Ok(Json(shared.with_live_counts(batch)))
}
