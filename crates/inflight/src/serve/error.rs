//! Errors as OpenAI's API answers them: an HTTP status and `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What is wrong, for a human.
    pub message: String,
    /// The parameter at fault.
    pub param: Option<&'static str>,
    /// A short code, where one applies.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param, code: None }
    }

    /// A 404 for an object this key cannot see (another key's looks the same as none).
    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("No such {what}: {id}"),
            param: Some("id"),
            code: Some("not_found"),
        }
    }

    /// A 401.
    pub fn unauthorized(message: &str, code: &'static str) -> ApiError {
        ApiError { status: StatusCode::UNAUTHORIZED, message: message.into(), param: None, code: Some(code) }
    }

    /// A 500 for something that went wrong here (the data directory, the metadata); logged.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!("serve: {e}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("internal error: {e}"),
            param: None,
            code: None,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "invalid_request_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        ApiError::internal(format!("metadata: {e}"))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> ApiError {
        ApiError::internal(format!("data directory: {e}"))
    }
}
