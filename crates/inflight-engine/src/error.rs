//! What can go wrong loading a model and running a job: each case once, with the numbers a user needs.

use std::path::PathBuf;

/// The model cannot be used; nothing has run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// No such file.
    #[error("{}: no such file", .0.display())]
    Missing(PathBuf),
    /// The file cannot be read.
    #[error("{}: cannot read: {why}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        why: String,
    },
    /// The file is not GGUF (wrong magic) or llama.cpp rejected it.
    #[error("{}: not a usable GGUF model ({why})", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// llama.cpp could not set up a context (usually memory).
    #[error("cannot set up the engine: {0}")]
    Context(String),
}

/// One job cannot be done; the others go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// The job needs more tokens than one sequence can hold.
    #[error(
        "this job needs {} tokens ({prompt_tokens} in the prompt + max_tokens {max_tokens}) but the engine's \
         context holds {limit}",
        *prompt_tokens as u64 + *max_tokens as u64
    )]
    ContextLengthExceeded {
        /// Tokens of the rendered prompt.
        prompt_tokens: u32,
        /// The job's `max_tokens`.
        max_tokens: u32,
        /// The most one sequence can hold.
        limit: u32,
    },
    /// The request cannot be done on this model (no chat template, cannot pool, bad schema, ...).
    #[error("{0}")]
    Invalid(String),
    /// llama.cpp failed while decoding.
    #[error("decode failed: {0}")]
    Decode(String),
    /// The engine has stopped.
    #[error("the engine has stopped")]
    Closed,
}
