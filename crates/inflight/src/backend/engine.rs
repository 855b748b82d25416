//! The embedded engine as a backend: OpenAI-shaped request bodies in, OpenAI-shaped answers out, decoded
//! in-process by `inflight-engine` (llama.cpp) with no server and no HTTP in between.
//!
//! The dispatcher, the store and the output files see the same shapes as for a server: this module is the
//! whole translation. The number of requests the dispatcher keeps in flight is the number of sequences the
//! engine decodes together, so `--concurrency auto` tunes the engine's batch as it tunes a server's lanes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use inflight_engine::{Engine, EngineConfig, EngineStats, JobError, Message, Params, Prompt};
use serde_json::{json, Value};

use super::{Answer, Api, Backend, BackendError, ServerInfo, ServerKind, ServerTimings, Streamed};
use crate::code::ErrorCode;
use crate::job::Endpoint;

/// `max_tokens` for a line that sets none. A server's default is "until the context is full", which would make
/// every job reserve its whole context in the engine's KV cache; lines that need more say so.
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// The engine behind the [`Backend`] trait.
pub struct EngineBackend {
    engine: Arc<Engine>,
    url: String,
    ids: AtomicU64,
}

impl EngineBackend {
    /// Loads the model and measures the threads (blocking work, run off the async threads).
    pub async fn load(config: EngineConfig) -> Result<EngineBackend, String> {
        let url = format!("engine:{}", config.model.display());
        let engine = tokio::task::spawn_blocking(move || Engine::load(config))
            .await
            .map_err(|e| format!("the engine's loader failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(EngineBackend { engine: Arc::new(engine), url, ids: AtomicU64::new(0) })
    }

    /// Sizes the KV cache for jobs like these (a sample of the run's bodies): the most tokens any of them
    /// needs, prompt plus `max_tokens`. Refuses, with the reason, a request this model cannot do at all (chat
    /// without a chat template, embeddings without pooling), so a run stops before it starts.
    pub fn plan(&self, sample: &[(Endpoint, &str)]) -> Result<(), String> {
        let mut need = 0u32;
        for (endpoint, body) in sample {
            let body: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
            match translate(*endpoint, &body) {
                Ok(Request::Generate(prompt, params)) => match self.engine.count(&prompt) {
                    Ok(n) => need = need.max(n + params.max_tokens),
                    Err(e @ JobError::Invalid(_)) => return Err(e.to_string()),
                    Err(_) => {}
                },
                Ok(Request::Embed(_)) => {
                    if self.engine.model().pooling.is_none() {
                        return Err(inflight_engine::cannot_pool(&self.engine.model().name));
                    }
                }
                Err(_) => {}
            }
        }
        if need > 0 {
            self.engine.plan_kv(need);
        }
        Ok(())
    }

    /// What the engine chose and counted.
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// A job's failure as the backend's error; a job too long for the context says how to make room.
    fn job_error(&self, e: JobError) -> BackendError {
        let trained = self.engine.model().n_ctx_train;
        match e {
            JobError::ContextLengthExceeded { limit, .. } if limit < trained => {
                let message = format!("{e}; --engine-context up to {trained} (the model's context) gives it room");
                refused(ErrorCode::ContextLengthExceeded, message)
            }
            e => job_error(e),
        }
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    async fn run(
        &self,
        endpoint: Endpoint,
        body: &str,
    ) -> Result<(Value, Option<i64>, Option<i64>, Option<String>), BackendError> {
        let body: Value = serde_json::from_str(body).map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
        let model = self.engine.model().name.clone();
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        match translate(endpoint, &body).map_err(|m| refused(ErrorCode::BadRequest, m))? {
            Request::Generate(prompt, params) => {
                let g = self.engine.generate(prompt, params).await.map_err(|e| self.job_error(e))?;
                let (p, c) = (g.prompt_tokens as i64, g.completion_tokens as i64);
                let usage = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
                let finish = g.finish.as_str();
                let answer = match endpoint {
                    Endpoint::Completion => json!({
                        "id": format!("cmpl-{}", self.next_id()), "object": "text_completion", "created": created,
                        "model": model, "usage": usage,
                        "choices": [{"index": 0, "text": g.text, "finish_reason": finish}],
                    }),
                    _ => json!({
                        "id": format!("chatcmpl-{}", self.next_id()), "object": "chat.completion", "created": created,
                        "model": model, "usage": usage,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": finish}],
                    }),
                };
                Ok((answer, Some(p), Some(c), Some(finish.to_owned())))
            }
            Request::Embed(inputs) => {
                let e = self.engine.embed(inputs).await.map_err(|e| self.job_error(e))?;
                let p = e.prompt_tokens as i64;
                let data: Vec<Value> = e
                    .vectors
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                    .collect();
                let answer = json!({
                    "object": "list", "model": model, "data": data,
                    "usage": {"prompt_tokens": p, "total_tokens": p},
                });
                Ok((answer, Some(p), None, None))
            }
        }
    }
}

#[async_trait]
impl Backend for EngineBackend {
    async fn send(&self, endpoint: Endpoint, body: &str) -> Result<Answer, BackendError> {
        let started = Instant::now();
        let (answer, prompt_tokens, completion_tokens, finish_reason) = self.run(endpoint, body).await?;
        Ok(Answer {
            status_code: 200,
            request_id: answer["id"].as_str().map(str::to_owned),
            body: answer.to_string(),
            prompt_tokens,
            completion_tokens,
            cached_tokens: None,
            finish_reason,
            first_byte: Some(started.elapsed()),
            load: None,
        })
    }

    /// The engine answers whole; the "stream" is the whole answer's timing (no first-token time).
    async fn stream(&self, endpoint: Endpoint, body: &str) -> Result<Streamed, BackendError> {
        let started = Instant::now();
        let (_, _, completion_tokens, _) = self.run(endpoint, body).await?;
        let total = started.elapsed();
        let tokens = completion_tokens.unwrap_or(0).max(0) as u64;
        Ok(Streamed {
            first_token: None,
            inter_token: (tokens > 1).then(|| total / tokens as u32),
            total,
            completion_tokens: tokens,
            server: ServerTimings::default(),
        })
    }

    async fn metrics(&self) -> Option<String> {
        None
    }

    async fn probe(&self) -> Result<ServerInfo, BackendError> {
        let m = self.engine.model();
        let stats = self.engine.stats();
        Ok(ServerInfo {
            models: vec![m.name.clone()],
            description: format!("embedded engine: {} ({}, {} layers)", m.name, m.architecture, m.n_layer),
            kind: ServerKind::Engine { sequences: stats.sequences },
            identity: Some(format!("gguf:{}:{}:{}", m.name, m.architecture, m.size)),
            loaded: None,
        })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn api(&self) -> Api {
        Api::Openai
    }

    fn url(&self) -> &str {
        &self.url
    }
}

#[derive(Debug)]
enum Request {
    Generate(Prompt, Params),
    Embed(Vec<String>),
}

/// A job the engine will not do, as the backend's permanent error (also the engine pool's).
pub(super) fn refused(code: ErrorCode, message: String) -> BackendError {
    BackendError::Refused { code, message }
}

fn job_error(e: JobError) -> BackendError {
    match e {
        JobError::ContextLengthExceeded { .. } => refused(ErrorCode::ContextLengthExceeded, e.to_string()),
        JobError::Invalid(m) => refused(ErrorCode::BadRequest, m),
        JobError::Decode(m) => BackendError::Status { status: 500, message: m, body: None, retry_after: None },
        JobError::Closed => BackendError::reset("the engine has stopped"),
    }
}

/// An OpenAI request body as the engine's request, or why it cannot be one.
fn translate(endpoint: Endpoint, body: &Value) -> Result<Request, String> {
    match endpoint {
        Endpoint::Embedding => {
            let inputs = match &body["input"] {
                Value::String(s) => vec![s.clone()],
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned).ok_or("`input` items must be strings on the engine"))
                    .collect::<Result<_, _>>()?,
                _ => return Err("`input` must be a string or an array of strings".into()),
            };
            Ok(Request::Embed(inputs))
        }
        Endpoint::Chat => {
            let messages = body["messages"].as_array().ok_or("`messages` must be an array")?;
            let messages = messages.iter().map(message).collect::<Result<Vec<_>, _>>()?;
            Ok(Request::Generate(Prompt::Chat(messages), params(body)?))
        }
        Endpoint::Completion => {
            let prompt = match &body["prompt"] {
                Value::String(s) => s.clone(),
                Value::Array(items) if items.len() == 1 && items[0].is_string() => {
                    items[0].as_str().unwrap_or_default().to_owned()
                }
                _ => return Err("`prompt` must be one string on the engine".into()),
            };
            Ok(Request::Generate(Prompt::Text(prompt), params(body)?))
        }
    }
}

fn message(m: &Value) -> Result<Message, String> {
    let role = m["role"].as_str().ok_or("a message needs a `role`")?.to_owned();
    let content = match &m["content"] {
        Value::String(s) => s.clone(),
        // The OpenAI parts form: the text parts, joined.
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
        Value::Null => String::new(),
        _ => return Err("a message's `content` must be a string or text parts".into()),
    };
    Ok(Message { role, content })
}

fn params(body: &Value) -> Result<Params, String> {
    let mut p = Params { max_tokens: DEFAULT_MAX_TOKENS, ..Params::default() };
    if let Some(n) = body.get("max_tokens").or_else(|| body.get("max_completion_tokens")).and_then(Value::as_u64) {
        p.max_tokens = n.clamp(1, u32::MAX as u64) as u32;
    }
    if let Some(t) = body["temperature"].as_f64() {
        p.temperature = t as f32;
    }
    if let Some(t) = body["top_p"].as_f64() {
        p.top_p = t as f32;
    }
    if let Some(s) = body["seed"].as_i64() {
        p.seed = Some(s as u32);
    }
    p.stop = match &body["stop"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    p.json_schema = match &body["response_format"] {
        Value::Null => None,
        f if f["type"] == "json_schema" => {
            let schema = f["json_schema"].get("schema").ok_or("`response_format.json_schema` needs a `schema`")?;
            Some(schema.to_string())
        }
        f if f["type"] == "json_object" => Some(json!({"type": "object"}).to_string()),
        f if f["type"] == "text" => None,
        _ => return Err("`response_format` must be text, json_object or json_schema".into()),
    };
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_translate_with_their_sampling_settings() {
        let body = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 7, "temperature": 0, "seed": 3, "stop": "\n",
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}});
        let Ok(Request::Generate(Prompt::Chat(m), p)) = translate(Endpoint::Chat, &body) else { panic!() };
        assert_eq!((m[0].role.as_str(), m[0].content.as_str()), ("user", "hi"));
        assert_eq!((p.max_tokens, p.temperature, p.seed), (7, 0.0, Some(3)));
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!(p.json_schema.as_deref(), Some(r#"{"type":"object"}"#));
        let Ok(Request::Generate(_, p)) = translate(Endpoint::Completion, &json!({"prompt": "x"})) else { panic!() };
        assert_eq!(p.max_tokens, DEFAULT_MAX_TOKENS);
        assert!(
            matches!(translate(Endpoint::Embedding, &json!({"input": ["a", "b"]})), Ok(Request::Embed(v)) if v.len() == 2)
        );
    }

    #[test]
    fn bodies_the_engine_cannot_do_are_refused_with_the_reason() {
        assert!(translate(Endpoint::Embedding, &json!({"input": [[1, 2]]})).unwrap_err().contains("strings"));
        assert!(translate(Endpoint::Completion, &json!({"prompt": ["a", "b"]})).unwrap_err().contains("one string"));
        let bad_format = json!({"messages": [], "response_format": {"type": "xml"}});
        assert!(translate(Endpoint::Chat, &bad_format).is_err());
    }

    #[test]
    fn a_job_too_long_for_the_context_is_refused_as_context_length_exceeded() {
        let e = job_error(JobError::ContextLengthExceeded { prompt_tokens: 900, max_tokens: 200, limit: 1024 });
        assert_eq!(e.code(), ErrorCode::ContextLengthExceeded);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("1100 tokens") && e.to_string().contains("1024"), "{e}");
    }
}
