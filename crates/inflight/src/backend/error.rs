//! `BackendError`: every way a request can fail, classified once.
//!
//! Transport and parse failures keep the error that caused them (`std::error::Error::source`) beside a
//! `detail` text. The text is what the error records and attempt logs show, so it already names the cause
//! (for a transport failure, the whole chain of causes); the source is there for code that wants to look at
//! the cause itself rather than read it. A printer that walks the sources as well (anyhow's `{:#}`) would
//! repeat the cause: messages are taken with `to_string()`.

use std::sync::Arc;
use std::time::Duration;

use crate::code::ErrorCode;

/// The error behind a [`BackendError`], shared so the error stays `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A failed request.
#[derive(Debug, Clone)]
pub enum BackendError {
    /// No connection could be made: the server is down or the address is wrong.
    Connect {
        /// What went wrong, the cause's chain included.
        detail: String,
        /// The transport's own error.
        source: Cause,
    },
    /// The connection broke before a complete answer arrived.
    Reset {
        /// What went wrong, the cause's chain included.
        detail: String,
        /// The transport's own error; `None` when we found the answer cut short ourselves.
        source: Option<Cause>,
    },
    /// No complete answer within the request timeout.
    Timeout(Duration),
    /// The server answered with a non-2xx status.
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
    Malformed {
        /// What is wrong with it.
        detail: String,
        /// The JSON parser's error, when parsing is what failed; `None` for a shape we checked ourselves or
        /// an error the server put in its answer.
        source: Option<Cause>,
    },
    /// The backend refused the request itself, before decoding anything (the embedded engine: the job does
    /// not fit its context, or asks what the model cannot do). The request's own fault: never retried.
    Refused {
        /// The record's code.
        code: ErrorCode,
        /// What is wrong, with the numbers.
        message: String,
    },
}

// By hand rather than derived: `source()` hands out the cause itself (not the `Arc` around it), so callers
// can downcast it to the transport's or the parser's error type.
impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Connect { detail, .. } => write!(f, "cannot connect: {detail}"),
            BackendError::Reset { detail, .. } => write!(f, "connection lost: {detail}"),
            BackendError::Timeout(after) => write!(f, "no answer within {}s", after.as_secs()),
            BackendError::Status { status, message, .. } => write!(f, "HTTP {status}: {message}"),
            BackendError::Malformed { detail, .. } => write!(f, "malformed answer: {detail}"),
            BackendError::Refused { message, .. } => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = match self {
            BackendError::Connect { source, .. } => Some(source),
            BackendError::Reset { source, .. } | BackendError::Malformed { source, .. } => source.as_ref(),
            BackendError::Timeout(_) | BackendError::Status { .. } | BackendError::Refused { .. } => None,
        };
        cause.map(|c| &**c as &(dyn std::error::Error + 'static))
    }
}

impl BackendError {
    /// A connection that could not be made, caused by `source`.
    pub fn connect(detail: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError::Connect { detail: detail.into(), source: Arc::new(source) }
    }

    /// A connection lost, caused by the transport error `source`.
    pub fn reset_by(detail: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError::Reset { detail: detail.into(), source: Some(Arc::new(source)) }
    }

    /// An answer cut short, as we found it (no underlying error).
    pub fn reset(detail: impl Into<String>) -> Self {
        BackendError::Reset { detail: detail.into(), source: None }
    }

    /// A malformed answer that failed to parse with `source`.
    pub fn malformed_by(detail: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError::Malformed { detail: detail.into(), source: Some(Arc::new(source)) }
    }

    /// A malformed answer, as we found it (a missing field, the server's own error in a stream).
    pub fn malformed(detail: impl Into<String>) -> Self {
        BackendError::Malformed { detail: detail.into(), source: None }
    }

    /// The error record's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackendError::Connect { .. } => ErrorCode::Connect,
            BackendError::Reset { .. } => ErrorCode::Reset,
            BackendError::Timeout(_) => ErrorCode::Timeout,
            BackendError::Malformed { .. } => ErrorCode::Malformed,
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
        matches!(self, BackendError::Connect { .. } | BackendError::Reset { .. })
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
        assert!(BackendError::malformed("x").is_retryable());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(BackendError::connect("x", refused).is_unreachable());
        assert!(BackendError::reset("x").is_unreachable());
        assert!(!BackendError::Timeout(Duration::from_secs(1)).is_unreachable());
        assert_eq!(status(404).kind(), "not_found");
        let refused = BackendError::Refused { code: ErrorCode::ContextLengthExceeded, message: "x".into() };
        assert!(!refused.is_retryable() && !refused.is_unreachable());
        assert_eq!(refused.kind(), "context_length_exceeded");
        assert_eq!(BackendError::reset("x").kind(), "reset");
        assert_eq!(BackendError::malformed("x").kind(), "malformed");
    }

    #[test]
    fn display_is_the_detail_and_the_cause_is_kept() {
        use std::error::Error as _;
        let parse = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let text = parse.to_string();
        let e = BackendError::malformed_by(format!("{parse} in a 1-byte answer"), parse);
        assert_eq!(e.to_string(), format!("malformed answer: {text} in a 1-byte answer"));
        let cause = e.source().expect("the parse error is kept");
        assert!(cause.downcast_ref::<serde_json::Error>().is_some());
        // A clone shares the cause.
        assert!(e.clone().source().is_some());

        let e = BackendError::reset("the stream ended before its end marker");
        assert_eq!(e.to_string(), "connection lost: the stream ended before its end marker");
        assert!(e.source().is_none());
        assert!(BackendError::malformed("context full").source().is_none());
    }
}
