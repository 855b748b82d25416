//! A sample of the user's `--jobs`: their models and the context each request needs, set against what the
//! server gives one request.
//!
//! Tokens are estimated at four characters each (doctor has no tokenizer for the server's model); the report
//! says so, and the context verdict leaves a margin for it.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::DoctorError;
use crate::job::{Endpoint, JobReader, Parser, SampleError};

/// Characters per token of the estimate.
const CHARS_PER_TOKEN: usize = 4;

/// What the sampled jobs need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobsFacts {
    /// The file sampled.
    pub path: String,
    /// Lines sampled (the first that parse).
    pub sampled: usize,
    /// Distinct models the jobs name.
    pub models: Vec<String>,
    /// Median prompt size, estimated tokens.
    pub prompt_tokens_p50: u64,
    /// Largest prompt, estimated tokens.
    pub prompt_tokens_max: u64,
    /// Largest output budget (`max_tokens`) of a job, when every sampled job sets one.
    pub output_tokens_max: Option<u64>,
    /// Largest prompt plus output budget: the context one request needs, estimated tokens.
    pub context_needed_max: u64,
    /// How tokens were counted.
    pub token_estimate: String,
}

/// Reads up to `limit` jobs of `path` with `parser` (the lines `run` would send, read by the reader `run` uses)
/// for the probe and for their sizes. Each bad line on the way goes to `progress`, printed as `run --dry-run`
/// prints it.
pub fn sample(
    path: &Path,
    parser: &Parser,
    max_line_bytes: u64,
    limit: usize,
    progress: &mut impl FnMut(String),
) -> Result<(Vec<(Endpoint, String)>, JobsFacts), DoctorError> {
    let jobs = JobReader::open(path, max_line_bytes, parser)?.sample_some(limit, |bad| progress(bad.to_string()));
    let jobs = jobs.map_err(|e| match e {
        SampleError::Empty(e) => DoctorError::Jobs(e),
        SampleError::Read(e) => DoctorError::JobsRead(e),
    })?;
    let bodies: Vec<Value> = jobs.iter().filter_map(|j| serde_json::from_str(&j.body).ok()).collect();
    let facts = facts_of(&path.display().to_string(), &bodies).expect("a non-empty sample has facts");
    Ok((jobs.into_iter().map(|j| (j.endpoint, j.body)).collect(), facts))
}

/// The sizes of rendered request bodies; `None` for an empty sample.
pub fn facts_of(path: &str, bodies: &[Value]) -> Option<JobsFacts> {
    if bodies.is_empty() {
        return None;
    }
    let mut prompts: Vec<u64> = bodies.iter().map(estimate_tokens).collect();
    let outputs: Vec<Option<u64>> =
        bodies.iter().map(|b| b["max_tokens"].as_u64().or_else(|| b["max_completion_tokens"].as_u64())).collect();
    let needed = prompts.iter().zip(&outputs).map(|(p, o)| p + o.unwrap_or(0)).max().unwrap_or(0);
    let mut models: Vec<String> = bodies.iter().filter_map(|b| b["model"].as_str().map(str::to_owned)).collect();
    models.sort();
    models.dedup();
    prompts.sort_unstable();
    Some(JobsFacts {
        path: path.to_owned(),
        sampled: bodies.len(),
        models,
        prompt_tokens_p50: prompts[prompts.len() / 2],
        prompt_tokens_max: prompts[prompts.len() - 1],
        output_tokens_max: outputs.iter().copied().collect::<Option<Vec<u64>>>().and_then(|o| o.into_iter().max()),
        context_needed_max: needed,
        token_estimate: format!("estimated at {CHARS_PER_TOKEN} characters per token"),
    })
}

/// Estimated prompt tokens of an OpenAI-shaped body (messages, prompt or embedding input).
fn estimate_tokens(body: &Value) -> u64 {
    fn chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(chars).sum(),
            Value::Object(o) => o.get("content").or_else(|| o.get("text")).map(chars).unwrap_or(0),
            _ => 0,
        }
    }
    let n = chars(&body["messages"]) + chars(&body["prompt"]) + chars(&body["input"]);
    n.div_ceil(CHARS_PER_TOKEN) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_prompts_and_budgets() {
        let bodies = [
            json!({"model": "a", "messages": [{"role": "user", "content": "x".repeat(400)}], "max_tokens": 64}),
            json!({"model": "b", "prompt": "y".repeat(40), "max_tokens": 512}),
            json!({"model": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "zzzz"}]}], "max_tokens": 8}),
        ];
        let f = facts_of("jobs.jsonl", &bodies).unwrap();
        assert_eq!(f.models, ["a", "b"]);
        assert_eq!((f.prompt_tokens_p50, f.prompt_tokens_max), (10, 100));
        assert_eq!(f.output_tokens_max, Some(512));
        assert_eq!(f.context_needed_max, 522);
        assert!(facts_of("x", &[]).is_none());
    }

    #[test]
    fn an_unbounded_output_is_not_a_budget() {
        let f = facts_of("x", &[json!({"prompt": "abcd"}), json!({"prompt": "abcd", "max_tokens": 9})]).unwrap();
        assert_eq!(f.output_tokens_max, None);
        assert_eq!(f.context_needed_max, 10);
    }
}
