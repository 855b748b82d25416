//! `/v1/files`: upload (multipart, purpose `batch`), list, retrieve, download, delete. A file is kept under its
//! id in `DIR/files/`; the name it was uploaded with is metadata only, never a path.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::auth::Owner;
use super::error::ApiError;
use super::ids;
use super::objects::{now_s, Deleted, FileObject, Page};
use super::Shared;

/// A file being written, removed unless [`Partial::keep`] renames it into place.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Partial {
    fn keep(mut self, to: &std::path::Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "the upload is larger than this server's --max-upload".to_owned(),
        _ => format!("cannot read the upload: {}", e.body_text()),
    };
    ApiError { status, message, param: Some("file"), code: None }
}

fn too_large(limit: u64) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("the file is larger than this server's limit of {limit} bytes (--max-upload)"),
        param: Some("file"),
        code: Some("file_too_large"),
    }
}

/// Streams the `file` field into `partial`; its size.
async fn receive(
    field: &mut axum::extract::multipart::Field<'_>,
    partial: &Partial,
    limit: u64,
) -> Result<u64, ApiError> {
    let mut out = tokio::fs::File::create(&partial.path).await?;
    let mut bytes = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(too_large(limit));
        }
        out.write_all(&chunk).await?;
    }
    out.sync_all().await?;
    Ok(bytes)
}

/// `POST /v1/files`.
pub async fn upload(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    let mut multipart = multipart.map_err(|e| ApiError::invalid(Some("file"), e.body_text()))?;
    let id = ids::new(ids::FILE);
    let partial = Partial { path: shared.files_dir().join(format!(".upload-{id}")), kept: false };
    let (mut purpose, mut received) = (None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").chars().take(255).collect::<String>();
                received = Some((name, receive(&mut field, &partial, shared.max_upload).await?));
            }
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                Some("purpose"),
                format!(
                    "purpose {other:?} is not served here: inflight serve stores files for batches (purpose \"batch\")"
                ),
            ))
        }
        None => return Err(ApiError::invalid(Some("purpose"), "missing the form field 'purpose' (\"batch\")")),
    }
    let Some((filename, bytes)) = received else {
        return Err(ApiError::invalid(Some("file"), "missing the form field 'file'"));
    };
    let file = FileObject {
        id: id.clone(),
        object: "file".into(),
        bytes,
        created_at: now_s(),
        filename,
        purpose: "batch".into(),
        status: "processed".into(),
    };
    let path = shared.file_path(&id).expect("a new id is valid");
    partial.keep(&path)?;
    if let Err(e) = shared.meta.insert_file(&owner, &file) {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    Ok(Json(file))
}

/// The query of `GET /v1/files`.
#[derive(Debug, Deserialize)]
pub struct ListFiles {
    after: Option<String>,
    limit: Option<u64>,
    purpose: Option<String>,
}

/// `GET /v1/files`: newest first; `after`, `limit` (1 to 10,000; all by default), `purpose`.
pub async fn list(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ListFiles>, QueryRejection>,
) -> Result<Json<Page<FileObject>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(None, e.body_text()))?;
    let limit = q.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid(Some("limit"), "limit must be between 1 and 10000"));
    }
    let rows = shared.meta.files(&owner, q.after.as_deref(), q.purpose.as_deref(), limit + 1)?;
    Ok(Json(page(rows, limit, |f| f.id.clone())))
}

/// The first `limit` of `rows` (which hold one more when there are more) as a page.
pub(super) fn page<T>(mut rows: Vec<T>, limit: u64, id: impl Fn(&T) -> String) -> Page<T> {
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Page { object: "list", first_id: rows.first().map(&id), last_id: rows.last().map(&id), data: rows, has_more }
}

fn owned_file(shared: &Shared, owner: &str, id: &str) -> Result<FileObject, ApiError> {
    shared.meta.file(owner, id)?.ok_or_else(|| ApiError::not_found("file", id))
}

/// `GET /v1/files/{id}`.
pub async fn retrieve(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(owned_file(&shared, &owner, &id)?))
}

/// `GET /v1/files/{id}/content`: the bytes, streamed.
pub async fn content(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = owned_file(&shared, &owner, &id)?;
    let path =
        shared.file_path(&file.id).ok_or_else(|| ApiError::internal(format!("stored id {} is malformed", file.id)))?;
    let f = tokio::fs::File::open(&path).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(
    Owner(owner): Owner,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let file = owned_file(&shared, &owner, &id)?;
    if shared.meta.delete_file(&owner, &file.id)? {
        if let Some(path) = shared.file_path(&file.id) {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(Json(Deleted { id: file.id, object: "file", deleted: true }))
}
