//! Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`), translated to and from the OpenAI shape.
//!
//! Two Ollama behaviours shape this file. A model unloads after `keep_alive` idle time (default 5 minutes), so
//! every request carries a longer `keep_alive`. And a request whose runner options (`num_ctx`, `num_batch`,
//! `num_gpu`, `num_thread`) differ from the loaded model's reloads the model, so runner options are fixed for
//! the whole run from the command line (`--param num_ctx=8192`) and per-line values are dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::http::Http;
use super::{Answer, Api, ApiKey, Backend, BackendError, ServerInfo, ServerKind, Streamed, TokenClock};
use crate::job::Endpoint;

/// How long Ollama keeps the model loaded after each request: long enough to bridge any pause in a run.
pub const KEEP_ALIVE: &str = "30m";
const RUNNER_OPTIONS: &[&str] = &["num_ctx", "num_batch", "num_gpu", "num_thread"];
/// OpenAI body fields that are Ollama `options`, with their Ollama names.
const OPTION_NAMES: &[(&str, &str)] = &[
    ("max_tokens", "num_predict"),
    ("max_completion_tokens", "num_predict"),
    ("n_predict", "num_predict"),
    ("temperature", "temperature"),
    ("seed", "seed"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("min_p", "min_p"),
    ("stop", "stop"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
    ("repeat_penalty", "repeat_penalty"),
];

/// An Ollama server.
pub struct OllamaBackend {
    http: Http,
    runner_options: Map<String, Value>,
    counter: AtomicU64,
}

impl OllamaBackend {
    /// A backend for the Ollama server at `url`; `runner_options` are sent with every request.
    pub fn new(
        url: &str,
        api_key: Option<ApiKey>,
        timeout: Duration,
        runner_options: Map<String, Value>,
    ) -> Result<OllamaBackend, BackendError> {
        Ok(OllamaBackend { http: Http::new(url, api_key, timeout)?, runner_options, counter: AtomicU64::new(0) })
    }

    /// Picks the runner options out of `--param` values.
    pub fn runner_options_of(params: &[(String, Value)]) -> Map<String, Value> {
        params
            .iter()
            .filter(|(k, _)| RUNNER_OPTIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Translates an OpenAI-shaped body to Ollama's request for `endpoint`: `(path, body)`.
pub fn to_ollama(
    endpoint: Endpoint,
    body: &Value,
    runner: &Map<String, Value>,
) -> Result<(&'static str, Value), String> {
    let obj = body.as_object().ok_or("request body is not an object")?;
    let mut options: Map<String, Value> = obj.get("options").and_then(Value::as_object).cloned().unwrap_or_default();
    for (openai, ollama) in OPTION_NAMES {
        if let Some(v) = obj.get(*openai) {
            options.insert((*ollama).into(), v.clone());
        }
    }
    options.retain(|k, _| !RUNNER_OPTIONS.contains(&k.as_str()));
    options.extend(runner.clone());
    let mut out = Map::new();
    out.insert("model".into(), obj.get("model").cloned().unwrap_or(Value::Null));
    out.insert("keep_alive".into(), KEEP_ALIVE.into());
    let path = match endpoint {
        Endpoint::Embedding => {
            out.insert("input".into(), obj.get("input").cloned().unwrap_or(Value::Null));
            out.insert("options".into(), Value::Object(runner.clone()));
            "/api/embed"
        }
        Endpoint::Chat => {
            out.insert("messages".into(), obj.get("messages").cloned().unwrap_or(Value::Null));
            out.insert("stream".into(), false.into());
            out.insert("options".into(), Value::Object(options));
            "/api/chat"
        }
        Endpoint::Completion => {
            out.insert("prompt".into(), obj.get("prompt").cloned().unwrap_or(Value::Null));
            out.insert("raw".into(), true.into());
            out.insert("stream".into(), false.into());
            out.insert("options".into(), Value::Object(options));
            "/api/generate"
        }
    };
    if let Some(format) = obj.get("format") {
        out.insert("format".into(), format.clone());
    }
    Ok((path, Value::Object(out)))
}

/// Translates Ollama's answer to the OpenAI shape, keeping Ollama's timings under `x_ollama`.
pub fn from_ollama(endpoint: Endpoint, v: &Value, n: u64) -> Value {
    let prompt = v["prompt_eval_count"].as_i64().unwrap_or(0);
    let completion = v["eval_count"].as_i64().unwrap_or(0);
    let timings = json!({
        "total_duration": v["total_duration"], "load_duration": v["load_duration"],
        "prompt_eval_duration": v["prompt_eval_duration"], "eval_duration": v["eval_duration"],
    });
    let model = v["model"].clone();
    match endpoint {
        Endpoint::Embedding => {
            let data: Vec<Value> = v["embeddings"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .enumerate()
                        .map(|(i, x)| json!({"object": "embedding", "index": i, "embedding": x}))
                        .collect()
                })
                .unwrap_or_default();
            json!({"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": prompt, "total_tokens": prompt}, "x_ollama": timings})
        }
        Endpoint::Chat | Endpoint::Completion => {
            let finish = v["done_reason"].as_str().unwrap_or("stop");
            let choice = if endpoint == Endpoint::Chat {
                json!({"index": 0, "message": {"role": "assistant", "content": v["message"]["content"]}, "finish_reason": finish})
            } else {
                json!({"index": 0, "text": v["response"], "finish_reason": finish})
            };
            let object = if endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" };
            json!({"id": format!("ollama-{n}"), "object": object, "model": model, "choices": [choice],
                   "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt.saturating_add(completion)},
                   "x_ollama": timings})
        }
    }
}

/// Reads Ollama's 2xx answer from `path` for `endpoint` as the `n`th answer of this backend: `Err` (malformed) unless it has
/// its expected fields (`embeddings`, or `done: true`), else the OpenAI-shaped answer ([`from_ollama`]) with its
/// token counts. The status is 200 and the timing unset: the caller fills them in.
pub fn answer_of(endpoint: Endpoint, path: &str, body: &Value, n: u64) -> Result<Answer, BackendError> {
    let ok = match endpoint {
        Endpoint::Embedding => body["embeddings"].is_array(),
        _ => body["done"].as_bool() == Some(true),
    };
    if !ok {
        return Err(BackendError::malformed(format!("an answer from {path} without its expected fields")));
    }
    let translated = from_ollama(endpoint, body, n);
    let (prompt_tokens, completion_tokens, finish_reason) = super::usage_of(&translated);
    Ok(Answer {
        status_code: 200,
        request_id: Some(format!("ollama-{n}")),
        body: translated.to_string(),
        prompt_tokens,
        completion_tokens: completion_tokens.filter(|_| endpoint != Endpoint::Embedding),
        cached_tokens: None,
        finish_reason,
        first_byte: None,
        load: body["load_duration"].as_u64().map(std::time::Duration::from_nanos),
    })
}

#[async_trait]
impl Backend for OllamaBackend {
    async fn send(&self, endpoint: Endpoint, body: &str) -> Result<Answer, BackendError> {
        let parsed: Value = serde_json::from_str(body).map_err(|e| BackendError::Status {
            status: 400,
            message: format!("stored request is not JSON: {e}"),
            body: None,
            retry_after: None,
        })?;
        let (path, req) = to_ollama(endpoint, &parsed, &self.runner_options)
            .map_err(|message| BackendError::Status { status: 400, message, body: None, retry_after: None })?;
        let reply = self.http.post(path, req.to_string()).await?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let answer = answer_of(endpoint, path, &reply.body, n)?;
        Ok(Answer { status_code: reply.status, first_byte: Some(reply.first_byte), ..answer })
    }

    async fn stream(&self, endpoint: Endpoint, body: &str) -> Result<Streamed, BackendError> {
        let parsed: Value = serde_json::from_str(body).map_err(|e| BackendError::malformed_by(e.to_string(), e))?;
        let (path, mut req) = to_ollama(endpoint, &parsed, &self.runner_options)
            .map_err(|message| BackendError::Status { status: 400, message, body: None, retry_after: None })?;
        req["stream"] = true.into();
        let mut clock = TokenClock::default();
        let started = std::time::Instant::now();
        self.http.post_stream(path, req.to_string(), |line, at| clock.ollama_line(line, at)).await?;
        clock.finish(started.elapsed())
    }

    /// Ollama serves no Prometheus metrics; its per-request durations come with each answer instead.
    async fn metrics(&self) -> Option<String> {
        None
    }

    async fn probe(&self) -> Result<ServerInfo, BackendError> {
        let version = self.http.get("/api/version", Duration::from_secs(5)).await?;
        let tags = self.http.get("/api/tags", Duration::from_secs(5)).await?;
        let models = tags.body["models"]
            .as_array()
            .map(|m| m.iter().filter_map(|x| x["name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let description = format!("Ollama {}", version.body["version"].as_str().unwrap_or("?"));
        let mut digests: Vec<String> = tags.body["models"]
            .as_array()
            .map(|m| {
                m.iter().filter_map(|x| Some(format!("{}@{}", x["name"].as_str()?, x["digest"].as_str()?))).collect()
            })
            .unwrap_or_default();
        digests.sort();
        let identity = (!digests.is_empty()).then(|| format!("ollama:{}", digests.join(",")));
        let loaded = self.http.get("/api/ps", Duration::from_secs(5)).await.ok().map(|ps| {
            let names = ps.body["models"].as_array().map(|m| m.iter().filter_map(|x| x["name"].as_str()).collect());
            names.unwrap_or_else(Vec::new).into_iter().map(str::to_owned).collect()
        });
        Ok(ServerInfo { models, description, kind: ServerKind::Ollama, identity, loaded })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.http.get("/api/version", Duration::from_secs(5)).await.map(|_| ())
    }

    fn api(&self) -> Api {
        Api::Ollama
    }

    fn url(&self) -> &str {
        self.http.base()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_maps_options_and_pins_runner_options() {
        let body = json!({"model": "m", "messages": [], "max_tokens": 8, "temperature": 0.1, "num_ctx": 1,
                          "options": {"num_ctx": 99}});
        let runner: Map<String, Value> = [("num_ctx".to_string(), json!(4096))].into_iter().collect();
        let (path, req) = to_ollama(Endpoint::Chat, &body, &runner).unwrap();
        assert_eq!(path, "/api/chat");
        assert_eq!(req["options"], json!({"num_predict": 8, "temperature": 0.1, "num_ctx": 4096}));
        assert_eq!(req["keep_alive"], KEEP_ALIVE);
        assert_eq!(req["stream"], false);
    }

    #[test]
    fn answers_become_openai_shaped() {
        let v = json!({"model": "m", "message": {"content": "hi"}, "done": true, "done_reason": "length",
                       "prompt_eval_count": 5, "eval_count": 7, "load_duration": 10});
        let out = from_ollama(Endpoint::Chat, &v, 1);
        assert_eq!(out["choices"][0]["message"]["content"], "hi");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(out["usage"]["total_tokens"], 12);
        assert_eq!(out["x_ollama"]["load_duration"], 10);
        let e = from_ollama(Endpoint::Embedding, &json!({"embeddings": [[1.0], [2.0]]}), 2);
        assert_eq!(e["data"][1]["embedding"], json!([2.0]));
    }

    #[test]
    fn token_counts_too_large_to_add_do_not_panic() {
        // Found by the property tests: the total overflowed (a panic in debug builds, a negative total in release).
        let v = json!({"done": true, "prompt_eval_count": i64::MAX, "eval_count": 1});
        assert_eq!(from_ollama(Endpoint::Chat, &v, 0)["usage"]["total_tokens"], i64::MAX);
        let a = answer_of(Endpoint::Completion, "/api/generate", &v, 0).unwrap();
        assert_eq!((a.prompt_tokens, a.completion_tokens), (Some(i64::MAX), Some(1)));
    }
}
