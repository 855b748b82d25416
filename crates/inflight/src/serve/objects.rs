//! The objects of OpenAI's Files and Batches APIs as `serve` returns them (the shapes of the official SDKs'
//! `FileObject`, `Batch`, `BatchError` and list pages).

use serde::{Deserialize, Serialize};

/// A batch's status. `expired` is never used: batches here do not expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Created; its input file is checked when its turn comes.
    Validating,
    /// The input file was refused (`errors` says why) or the run could not go on.
    Failed,
    /// Its jobs are being sent.
    InProgress,
    /// Every job is finished; its output files are being made.
    Finalizing,
    /// Done: `output_file_id` and `error_file_id` hold the results.
    Completed,
    /// A cancel was asked; the requests in flight are finishing.
    Cancelling,
    /// Cancelled; what had finished is in its output files.
    Cancelled,
}

impl BatchStatus {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Whether nothing more will happen to the batch.
    pub fn is_final(self) -> bool {
        matches!(self, BatchStatus::Failed | BatchStatus::Completed | BatchStatus::Cancelled)
    }
}

/// Jobs of a batch: all, succeeded, failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Requests in the input file.
    pub total: u64,
    /// Requests answered.
    pub completed: u64,
    /// Requests that failed.
    pub failed: u64,
}

/// Token counts of a batch's answers, as the servers reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Always 0 cached: inflight does not count the servers' prompt cache hits here.
    pub input_tokens_details: InputTokensDetails,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Always 0 reasoning tokens: not counted apart.
    pub output_tokens_details: OutputTokensDetails,
    /// Both.
    pub total_tokens: u64,
}

impl BatchUsage {
    /// Usage of `input` prompt and `output` completion tokens.
    pub fn new(input: u64, output: u64) -> BatchUsage {
        BatchUsage {
            input_tokens: input,
            input_tokens_details: InputTokensDetails::default(),
            output_tokens: output,
            output_tokens_details: OutputTokensDetails::default(),
            total_tokens: input + output,
        }
    }
}

/// `usage.input_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    /// Prompt tokens served from a cache.
    pub cached_tokens: u64,
}

/// `usage.output_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
}

/// One reason a batch failed (an input line, or the run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchError {
    /// A short code: the bad line's code (`invalid_json`, `bad_url`, ...), `mismatched_endpoint`, `empty_file`,
    /// `input_file_missing`, `run_failed`.
    pub code: String,
    /// What is wrong, for a human.
    pub message: String,
    /// The parameter at fault, if one is.
    pub param: Option<String>,
    /// The input line (1-based), for a bad line.
    pub line: Option<u64>,
}

/// A batch's `errors`: a list object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchErrors {
    /// Always `list`.
    pub object: String,
    /// The errors.
    pub data: Vec<BatchError>,
}

impl BatchErrors {
    /// A list of `data`.
    pub fn new(data: Vec<BatchError>) -> BatchErrors {
        BatchErrors { object: "list".into(), data }
    }
}

/// A batch, as `GET /v1/batches/{id}` returns it (Unix seconds for every time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// `batch_` and random hex.
    pub id: String,
    /// Always `batch`.
    pub object: String,
    /// The endpoint every line is sent to.
    pub endpoint: String,
    /// Why it failed.
    pub errors: Option<BatchErrors>,
    /// The input file.
    pub input_file_id: String,
    /// As given at creation; recorded, never enforced (batches do not expire).
    pub completion_window: String,
    /// Where it is.
    pub status: BatchStatus,
    /// The results file, once there is one.
    pub output_file_id: Option<String>,
    /// The failures file, once there is one.
    pub error_file_id: Option<String>,
    /// When it was created.
    pub created_at: i64,
    /// When sending began.
    pub in_progress_at: Option<i64>,
    /// Never set: batches do not expire.
    pub expires_at: Option<i64>,
    /// When the output files began to be made.
    pub finalizing_at: Option<i64>,
    /// When it completed.
    pub completed_at: Option<i64>,
    /// When it failed.
    pub failed_at: Option<i64>,
    /// Never set.
    pub expired_at: Option<i64>,
    /// When a cancel was asked.
    pub cancelling_at: Option<i64>,
    /// When it was cancelled.
    pub cancelled_at: Option<i64>,
    /// Its jobs.
    pub request_counts: RequestCounts,
    /// The creator's key-value pairs.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Tokens of its answers so far (live while it runs).
    #[serde(default)]
    pub usage: Option<BatchUsage>,
}

/// A stored file, as `GET /v1/files/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileObject {
    /// `file-` and random hex.
    pub id: String,
    /// Always `file`.
    pub object: String,
    /// Its size.
    pub bytes: u64,
    /// When it was stored (Unix seconds).
    pub created_at: i64,
    /// The name it was uploaded with (or `BATCH_output.jsonl` for results).
    pub filename: String,
    /// `batch` (uploads), `batch_output` (results and failures).
    pub purpose: String,
    /// Always `processed`.
    pub status: String,
}

/// A page of a list endpoint.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// Always `list`.
    pub object: &'static str,
    /// The items, newest first.
    pub data: Vec<T>,
    /// The first item's id.
    pub first_id: Option<String>,
    /// The last item's id: pass it as `after` for the next page.
    pub last_id: Option<String>,
    /// Whether there are more after this page.
    pub has_more: bool,
}

/// The answer to `DELETE /v1/files/{id}`.
#[derive(Debug, Serialize)]
pub struct Deleted {
    /// The file.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    /// Always true.
    pub deleted: bool,
}

/// Now, in Unix seconds.
pub fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
