//! Jobs: what one input line becomes, and how a job file is opened, read and parsed (one reader for every
//! command).
//!
//! A job is stored fully rendered — the endpoint and the exact JSON body to send — so that a resumed run
//! sends byte-for-byte what the first run would have, whatever the backend's wire format.

mod file;
mod input;
mod parse;
#[cfg(test)]
pub(crate) mod proptests;
mod template;
mod validate;

pub use file::{check_input, Entry, JobFileError, JobReader, SampleError, TemplateFile};
pub use input::{LineReader, RawLine};
pub use parse::{hex, BadLine, Parser, RequestDefaults};
pub use template::{Template, TemplateError};
pub use validate::{check_body, FieldError};

use serde::{Deserialize, Serialize};

/// The OpenAI-style endpoint a job is for; backends translate it to their own API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions` (raw text completion, no chat template)
    Completion,
    /// `/v1/embeddings`
    Embedding,
}

impl Endpoint {
    /// The OpenAI path of this endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
            Endpoint::Embedding => "/v1/embeddings",
        }
    }

    /// Parses an OpenAI Batch `url` field.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completion),
            "/v1/embeddings" => Some(Endpoint::Embedding),
            _ => None,
        }
    }

    /// Stable one-letter code used in the store.
    pub fn code(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completion => "completion",
            Endpoint::Embedding => "embedding",
        }
    }

    /// Inverse of [`Endpoint::code`].
    pub fn from_code(code: &str) -> Option<Endpoint> {
        match code {
            "chat" => Some(Endpoint::Chat),
            "completion" => Some(Endpoint::Completion),
            "embedding" => Some(Endpoint::Embedding),
            _ => None,
        }
    }
}

/// One accepted input line, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// 1-based input line number.
    pub line: u64,
    /// `custom_id`, else `id`, else the line number.
    pub id: String,
    /// Which endpoint the body is for.
    pub endpoint: Endpoint,
    /// The OpenAI-shaped request body, serialized.
    pub body: String,
}
