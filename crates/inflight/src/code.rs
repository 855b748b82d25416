//! Error codes: the `error.code` of every error record (pinned by `docs/schema/batch-error.schema.json`), one
//! enum for the three places they come from, so no code is spelled twice and none is invented in a test.
//! Stored and written as their snake_case names.

use std::fmt;

/// Why a line was refused or a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // Input lines that did not become jobs.
    /// Not valid JSON.
    InvalidJson,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not a JSON object.
    NotAnObject,
    /// The template (or a workflow step's) did not render over the line.
    TemplateError,
    /// A second line with an id already taken.
    DuplicateId,
    /// A field the line's shape needs is missing.
    MissingField,
    /// A field has the wrong type or value.
    BadField,
    /// A batch line's `url` is not an endpoint inflight sends to.
    BadUrl,
    /// The id is not a non-empty string or a number.
    BadId,
    /// Longer than `--max-line-bytes`.
    LineTooLong,
    // Requests: how the server answered, or did not (`BackendError::code`).
    /// No connection could be made.
    Connect,
    /// The connection broke before a complete answer.
    Reset,
    /// No complete answer within the request timeout (or HTTP 408).
    Timeout,
    /// A 2xx answer that is not the expected JSON.
    Malformed,
    /// HTTP 400.
    BadRequest,
    /// HTTP 401 or 403.
    Unauthorized,
    /// HTTP 404.
    NotFound,
    /// HTTP 413.
    TooLarge,
    /// HTTP 422.
    Unprocessable,
    /// HTTP 429.
    RateLimited,
    /// HTTP 501.
    NotImplemented,
    /// HTTP 503.
    Busy,
    /// Another HTTP 5xx.
    ServerError,
    /// Another HTTP 4xx.
    ClientError,
    /// The job needs more tokens (prompt plus `max_tokens`) than the engine's context holds.
    ContextLengthExceeded,
    // The run's own verdicts.
    /// A workflow step's answers kept failing its JSON Schema.
    InvalidOutput,
    /// Every attempt was spent; the last one was in flight when an earlier run stopped.
    AttemptsExhausted,
    /// The job was in flight during several outages of its server (it may be what crashes it).
    ServerCrashed,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidUtf8,
        ErrorCode::NotAnObject,
        ErrorCode::TemplateError,
        ErrorCode::DuplicateId,
        ErrorCode::MissingField,
        ErrorCode::BadField,
        ErrorCode::BadUrl,
        ErrorCode::BadId,
        ErrorCode::LineTooLong,
        ErrorCode::Connect,
        ErrorCode::Reset,
        ErrorCode::Timeout,
        ErrorCode::Malformed,
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::Unprocessable,
        ErrorCode::RateLimited,
        ErrorCode::NotImplemented,
        ErrorCode::Busy,
        ErrorCode::ServerError,
        ErrorCode::ClientError,
        ErrorCode::ContextLengthExceeded,
        ErrorCode::InvalidOutput,
        ErrorCode::AttemptsExhausted,
        ErrorCode::ServerCrashed,
    ];

    /// The code a record or the store spells `name`, if it is one.
    pub fn parse(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The code as written in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::TemplateError => "template_error",
            ErrorCode::DuplicateId => "duplicate_id",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::BadField => "bad_field",
            ErrorCode::BadUrl => "bad_url",
            ErrorCode::BadId => "bad_id",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::Connect => "connect",
            ErrorCode::Reset => "reset",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Malformed => "malformed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unprocessable => "unprocessable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Busy => "busy",
            ErrorCode::ServerError => "server_error",
            ErrorCode::ClientError => "client_error",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::InvalidOutput => "invalid_output",
            ErrorCode::AttemptsExhausted => "attempts_exhausted",
            ErrorCode::ServerCrashed => "server_crashed",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl rusqlite::ToSql for ErrorCode {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_snake_case_and_distinct() {
        let names: std::collections::HashSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')));
    }

    #[test]
    fn the_readme_lists_every_bad_line_code() {
        let readme = include_str!("../../../README.md");
        for code in &ErrorCode::ALL[..10] {
            assert!(readme.contains(&format!("`{code}`")), "README does not name {code}");
        }
    }
}
