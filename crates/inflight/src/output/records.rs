//! The output record shapes, pinned by the JSON Schemas in `docs/schema/`.
//!
//! `batch` follows the OpenAI Batch output format (`{id, custom_id, response, error}`), so tools that read
//! OpenAI or vLLM batch results read ours; `simple` is `{id, output, usage, latency_ms}` for people who want the
//! answer text and nothing else.

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::store::{DoneRow, ErrorRow};

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

    /// The shape an export writes, `asked` by `--format`, of a run whose stored format is `stored`: a workflow
    /// run's lines hold every step, so they keep their own shape.
    pub fn for_export(stored: Option<&str>, asked: Format) -> Format {
        if stored == Some(Format::Workflow.name()) {
            Format::Workflow
        } else {
            asked
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

/// The `response` object of a batch line: the server's answer.
fn response(status_code: i64, request_id: Option<&str>, body: Option<&str>) -> Value {
    json!({
        "status_code": status_code,
        "request_id": request_id.unwrap_or_default(),
        "body": raw_body(body),
    })
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
pub fn render_done(row: &DoneRow, format: Format) -> String {
    match format {
        // The store assembled the line when the job's last step finished.
        Format::Workflow => row.response.clone(),
        Format::Batch => json!({
            "id": format!("batch_req_{}", row.seq),
            "custom_id": row.id,
            "response": response(row.status_code, row.request_id.as_deref(), Some(&row.response)),
            "error": null,
        })
        .to_string(),
        Format::Simple => {
            let body: Value = serde_json::from_str(&row.response).unwrap_or(Value::Null);
            json!({
                "id": row.id,
                "output": answer_output(&body),
                "usage": body.get("usage").cloned().unwrap_or(Value::Null),
                "latency_ms": row.latency_ms,
            })
            .to_string()
        }
    }
}

/// One line of OUT.errors.jsonl: a failed job, or a bad input line (keyed by `line`, with its own id if readable).
pub fn render_error(row: &ErrorRow, format: Format) -> String {
    let error = json!({"code": row.code(), "message": row.message()});
    // A bad line was never a job: no batch request id, no answer, no step; its `custom_id` is the line's own.
    let (batch_id, id, answer, step) = match row {
        ErrorRow::Failed(f) => {
            let answer = f.answer.as_ref().map(|a| response(a.status_code, a.request_id.as_deref(), a.body.as_deref()));
            (Some(format!("batch_req_{}", f.seq)), Some(f.id.as_str()), answer, f.step.as_deref())
        }
        ErrorRow::BadLine(b) => (None, b.custom_id.as_deref(), None, None),
    };
    match format {
        Format::Batch => json!({
            "id": batch_id,
            "custom_id": id,
            "response": answer,
            "error": error,
            "line": row.line(),
        })
        .to_string(),
        Format::Simple => json!({"id": id, "error": error, "line": row.line()}).to_string(),
        Format::Workflow => json!({
            "id": batch_id,
            "custom_id": id,
            "response": answer,
            "error": error,
            "line": row.line(),
            "step": step,
        })
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BadLineRow, FailedAnswer, FailedRow};

    fn done_row() -> DoneRow {
        DoneRow {
            seq: 3,
            id: "a".into(),
            status_code: 200,
            request_id: Some("r".into()),
            response: r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":1}}"#.into(),
            latency_ms: 12,
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

    fn bad_line(custom_id: Option<&str>) -> ErrorRow {
        let custom_id = custom_id.map(str::to_owned);
        ErrorRow::BadLine(BadLineRow { line: 9, code: "invalid_json".into(), message: "x".into(), custom_id })
    }

    #[test]
    fn bad_line_error_has_line_and_no_request_id() {
        let v: Value = serde_json::from_str(&render_error(&bad_line(None), Format::Batch)).unwrap();
        assert_eq!(v["line"], 9);
        assert!(v["id"].is_null() && v["custom_id"].is_null() && v["response"].is_null());
        assert_eq!(v["error"]["code"], "invalid_json");
        let v: Value = serde_json::from_str(&render_error(&bad_line(None), Format::Workflow)).unwrap();
        assert!(v["step"].is_null() && v["response"].is_null());
    }

    #[test]
    fn bad_line_error_keeps_the_lines_own_id() {
        let v: Value = serde_json::from_str(&render_error(&bad_line(Some("r7")), Format::Batch)).unwrap();
        assert_eq!((v["custom_id"].as_str(), v["line"].as_u64()), (Some("r7"), Some(9)));
        assert!(v["id"].is_null(), "a bad line has no batch request id: {v}");
        let v: Value = serde_json::from_str(&render_error(&bad_line(Some("r7")), Format::Simple)).unwrap();
        assert_eq!(v["id"], "r7");
    }

    fn failed_row(answer: Option<FailedAnswer>) -> ErrorRow {
        ErrorRow::Failed(FailedRow {
            seq: 7,
            line: 8,
            id: "b".into(),
            answer,
            code: "not_found".into(),
            message: "HTTP 404: no such model".into(),
            step: Some("judge".into()),
        })
    }

    #[test]
    fn failed_job_error_keeps_the_servers_answer_when_there_was_one() {
        let answer = FailedAnswer { status_code: 404, request_id: None, body: Some(r#"{"error":"no"}"#.into()) };
        let line = render_error(&failed_row(Some(answer)), Format::Batch);
        assert_eq!(
            line,
            r#"{"custom_id":"b","error":{"code":"not_found","message":"HTTP 404: no such model"},"id":"batch_req_7","line":8,"response":{"body":{"error":"no"},"request_id":"","status_code":404}}"#
        );
        let v: Value = serde_json::from_str(&render_error(&failed_row(None), Format::Workflow)).unwrap();
        assert!(v["response"].is_null());
        assert_eq!((v["id"].as_str(), v["step"].as_str()), (Some("batch_req_7"), Some("judge")));
        let v: Value = serde_json::from_str(&render_error(&failed_row(None), Format::Simple)).unwrap();
        assert_eq!(
            v,
            json!({"id": "b", "error": {"code": "not_found", "message": "HTTP 404: no such model"}, "line": 8})
        );
    }

    #[test]
    fn embeddings_output_is_the_vector() {
        assert_eq!(answer_output(&json!({"data": [{"embedding": [1.0, 2.0]}]})), json!([1.0, 2.0]));
        assert_eq!(answer_output(&json!({"choices": [{"text": "t"}]})), json!("t"));
    }
}
