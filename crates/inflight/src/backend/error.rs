//! `BackendError`: every way a request can fail, classified once.

use std::time::Duration;

use crate::code::ErrorCode;

/// A failed request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// No connection could be made: the server is down or the address is wrong.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke before a complete answer arrived.
    #[error("connection lost: {0}")]
    Reset(String),
    /// No complete answer within the request timeout.
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// The server answered with a non-2xx status.
    #[error("HTTP {status}: {message}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The server's own error message.
        message: String,
        /// The answer body, when it was JSON.
        body: Option<String>,
        /// The server's `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// A 2xx answer whose body is not the JSON we expect (truncated, or not JSON).
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The backend refused the request itself, before decoding anything (the embedded engine: the job does
    /// not fit its context, or asks what the model cannot do). The request's own fault: never retried.
    #[error("{message}")]
    Refused {
        /// The record's code.
        code: ErrorCode,
        /// What is wrong, with the numbers.
        message: String,
    },
}

impl BackendError {
    /// The error record's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackendError::Connect(_) => ErrorCode::Connect,
            BackendError::Reset(_) => ErrorCode::Reset,
            BackendError::Timeout(_) => ErrorCode::Timeout,
            BackendError::Malformed(_) => ErrorCode::Malformed,
            BackendError::Refused { code, .. } => *code,
            BackendError::Status { status, .. } => match status {
                400 => ErrorCode::BadRequest,
                401 | 403 => ErrorCode::Unauthorized,
                404 => ErrorCode::NotFound,
                408 => ErrorCode::Timeout,
                413 => ErrorCode::TooLarge,
                422 => ErrorCode::Unprocessable,
                429 => ErrorCode::RateLimited,
                501 => ErrorCode::NotImplemented,
                503 => ErrorCode::Busy,
                500..=599 => ErrorCode::ServerError,
                _ => ErrorCode::ClientError,
            },
        }
    }

    /// Short stable name, used in the errors file and in metrics: the code's name.
    pub fn kind(&self) -> &'static str {
        self.code().as_str()
    }

    /// Whether the same request may succeed later: transport failures, timeouts, malformed bodies and
    /// 408/429/500/502/503/504. Other statuses (other 4xx, 501) are the request's own fault.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Status { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            BackendError::Refused { .. } => false,
            _ => true,
        }
    }

    /// Whether this failure says the server is unreachable (rather than answering badly). Such failures cost
    /// a job no attempt while the server answers nobody; the run pauses instead.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, BackendError::Connect(_) | BackendError::Reset(_))
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            BackendError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's answer body, if it answered with JSON.
    pub fn body(&self) -> Option<&str> {
        match self {
            BackendError::Status { body, .. } => body.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> BackendError {
        BackendError::Status { status: s, message: String::new(), body: None, retry_after: None }
    }

    #[test]
    fn classification_follows_http_semantics() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 404, 422, 501] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        assert!(BackendError::Malformed("x".into()).is_retryable());
        assert!(BackendError::Connect("x".into()).is_unreachable());
        assert!(!BackendError::Timeout(Duration::from_secs(1)).is_unreachable());
        assert_eq!(status(404).kind(), "not_found");
        let refused = BackendError::Refused { code: ErrorCode::ContextLengthExceeded, message: "x".into() };
        assert!(!refused.is_retryable() && !refused.is_unreachable());
        assert_eq!(refused.kind(), "context_length_exceeded");
    }
}
