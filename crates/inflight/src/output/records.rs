//! The output record shapes, pinned by the JSON Schemas in `docs/schema/`.
//!
//! `batch` follows the OpenAI Batch output format (`{id, custom_id, response, error}`), so tools that read
//! OpenAI or vLLM batch results read ours; `simple` is `{id, output, usage, latency_ms}` for people who want the
//! answer text and nothing else.

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::store::OutcomeRow;

/// Shape of the output lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// OpenAI Batch output lines: `{id, custom_id, response: {status_code, request_id, body}, error}`.
    Batch,
    /// `{id, output, usage, latency_ms}`: the answer text (or embedding) only.
    Simple,
    /// `{id, steps: {NAME: {output, usage, latency_ms, attempts}}}`: a workflow job (set by `--workflow`).
    #[value(skip)]
    Workflow,
}

impl Format {
    /// Name stored in the run's metadata.
    pub fn name(self) -> &'static str {
        match self {
            Format::Batch => "batch",
            Format::Simple => "simple",
            Format::Workflow => "workflow",
        }
    }
}

fn raw_body(text: Option<&str>) -> Value {
    // Bodies are stored as the server sent them, already checked to be JSON; keep them byte-exact.
    match text.map(|t| RawValue::from_string(t.to_owned())) {
        Some(Ok(raw)) => serde_json::to_value(raw).unwrap_or(Value::Null),
        Some(Err(_)) => Value::String(text.unwrap_or_default().to_owned()),
        None => Value::Null,
    }
}

fn response(row: &OutcomeRow) -> Value {
    match row.status_code {
        Some(code) => json!({
            "status_code": code,
            "request_id": row.request_id.clone().unwrap_or_default(),
            "body": raw_body(row.response.as_deref()),
        }),
        None => Value::Null,
    }
}

/// The answer's useful part: message content, completion text, or the embedding(s).
pub fn answer_output(body: &Value) -> Value {
    if let Some(data) = body.get("data").and_then(Value::as_array) {
        let mut vectors: Vec<Value> = data.iter().filter_map(|d| d.get("embedding").cloned()).collect();
        return if vectors.len() == 1 { vectors.pop().unwrap_or(Value::Null) } else { Value::Array(vectors) };
    }
    let choice = &body["choices"][0];
    if let Some(content) = choice["message"].get("content") {
        return content.clone();
    }
    choice.get("text").cloned().unwrap_or(Value::Null)
}

/// One line of OUT.jsonl.
pub fn render_done(row: &OutcomeRow, format: Format) -> String {
    let id = row.id.clone().unwrap_or_default();
    match format {
        // The store assembled the line when the job's last step finished.
        Format::Workflow => row.response.clone().unwrap_or_else(|| "null".into()),
        Format::Batch => json!({
            "id": format!("batch_req_{}", row.seq.unwrap_or_default()),
            "custom_id": id,
            "response": response(row),
            "error": null,
        })
        .to_string(),
        Format::Simple => {
            let body: Value = row.response.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null);
            json!({
                "id": id,
                "output": answer_output(&body),
                "usage": body.get("usage").cloned().unwrap_or(Value::Null),
                "latency_ms": row.latency_ms,
            })
            .to_string()
        }
    }
}

/// One line of OUT.errors.jsonl: a failed job, or a bad input line (no id, keyed by `line`).
pub fn render_error(row: &OutcomeRow, format: Format) -> String {
    let error =
        json!({"code": row.code.clone().unwrap_or_default(), "message": row.message.clone().unwrap_or_default()});
    match format {
        Format::Batch => json!({
            "id": row.seq.map(|s| format!("batch_req_{s}")),
            "custom_id": row.id,
            "response": response(row),
            "error": error,
            "line": row.line,
        })
        .to_string(),
        Format::Simple => json!({"id": row.id, "error": error, "line": row.line}).to_string(),
        Format::Workflow => json!({
            "id": row.seq.map(|s| format!("batch_req_{s}")),
            "custom_id": row.id,
            "response": response(row),
            "error": error,
            "line": row.line,
            "step": row.step,
        })
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done_row() -> OutcomeRow {
        OutcomeRow {
            seq: Some(3),
            line: 4,
            id: Some("a".into()),
            status_code: Some(200),
            request_id: Some("r".into()),
            response: Some(r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":1}}"#.into()),
            latency_ms: Some(12),
            ..Default::default()
        }
    }

    #[test]
    fn batch_line_embeds_body_verbatim() {
        let v: Value = serde_json::from_str(&render_done(&done_row(), Format::Batch)).unwrap();
        assert_eq!(v["custom_id"], "a");
        assert_eq!(v["id"], "batch_req_3");
        assert_eq!(v["response"]["body"]["choices"][0]["message"]["content"], "hi");
        assert!(v["error"].is_null());
    }

    #[test]
    fn simple_line_has_output_usage_latency() {
        let v: Value = serde_json::from_str(&render_done(&done_row(), Format::Simple)).unwrap();
        assert_eq!(v, json!({"id": "a", "output": "hi", "usage": {"completion_tokens": 1}, "latency_ms": 12}));
    }

    #[test]
    fn bad_line_error_has_line_and_no_id() {
        let row =
            OutcomeRow { line: 9, code: Some("invalid_json".into()), message: Some("x".into()), ..Default::default() };
        let v: Value = serde_json::from_str(&render_error(&row, Format::Batch)).unwrap();
        assert_eq!(v["line"], 9);
        assert!(v["custom_id"].is_null() && v["response"].is_null());
        assert_eq!(v["error"]["code"], "invalid_json");
    }

    #[test]
    fn embeddings_output_is_the_vector() {
        assert_eq!(answer_output(&json!({"data": [{"embedding": [1.0, 2.0]}]})), json!([1.0, 2.0]));
        assert_eq!(answer_output(&json!({"choices": [{"text": "t"}]})), json!("t"));
    }
}
