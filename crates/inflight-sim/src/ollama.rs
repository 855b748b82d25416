//! Ollama's native API: `/api/chat`, `/api/generate` and `/api/embed`
//! (streamed as NDJSON unless `"stream": false`), `/api/tags`, `/api/ps`,
//! `/api/version` and the `Ollama is running` banner.
//!
//! Durations in responses are nanoseconds of simulated time, and
//! `keep_alive` is simulated time too.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::app::{stream_body, App, Piece, Spec};
use crate::engine::Finished;
use crate::scheduler::{KeepAlive, RunnerOpts};
use crate::server::ConnHandle;
use crate::wire::{
    completion_text, embedding, estimate_tokens, hash, message_tokens, rfc3339, string_or_list, token_text,
};

/// Routes of the Ollama server.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/version", get(|| async { Json(json!({"version": "0.12.0"})) }))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .with_state(app)
}

/// Ollama's canonical model name: an untagged name means `:latest`.
fn canonical(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn model_entry(name: &str) -> Value {
    let name = canonical(name);
    json!({
        "name": name,
        "model": name,
        "modified_at": rfc3339(SystemTime::now()),
        "size": 145_000_000u64,
        "digest": format!("{:016x}{:016x}", hash(name.as_bytes()), hash(b"inflight-sim")),
        "details": {
            "parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
            "parameter_size": "135M", "quantization_level": "Q8_0",
        },
    })
}

/// Parses a Go duration (`"5m"`, `"1h30m"`, `"-1"`) or a number of seconds, in seconds.
fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Some(secs);
    }
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(sign * total)
}

fn keep_alive(v: &Value) -> Result<Option<KeepAlive>, String> {
    let secs = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_duration(s),
        _ => None,
    };
    match secs {
        Some(s) if s < 0.0 => Ok(Some(KeepAlive::Forever)),
        Some(s) => Ok(Some(KeepAlive::For(s))),
        None => Err(format!("invalid keep_alive: {v}")),
    }
}

/// The request's fields every inference endpoint shares; `Err` is the response to send instead.
fn admit(app: &App, body: &[u8]) -> Result<(Value, String, Option<KeepAlive>), Box<Response>> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Box::new(app.bad_request(&format!("invalid JSON body: {e}"))))?;
    let Some(model) = v["model"].as_str().map(str::to_string) else {
        return Err(Box::new(app.bad_request("model is required")));
    };
    if app.is_missing(&canonical(&model), |a, b| canonical(a) == b) {
        let msg = format!("model \"{model}\" not found, try pulling it first");
        return Err(Box::new(app.not_found(&msg)));
    }
    let ka = keep_alive(&v["keep_alive"]).map_err(|e| Box::new(app.bad_request(&e)))?;
    Ok((v, model, ka))
}

fn runner_opts(options: &Value) -> RunnerOpts {
    RunnerOpts {
        num_ctx: options["num_ctx"].as_i64(),
        num_batch: options["num_batch"].as_i64(),
        num_gpu: options["num_gpu"].as_i64(),
        num_thread: options["num_thread"].as_i64(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Chat,
    Generate,
}

#[derive(Debug)]
struct Meta {
    kind: Kind,
    model: String,
    prompt_tokens: u32,
}

fn nanos(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9).round() as u64
}

impl Meta {
    /// One answer object: a token line while streaming, or the final one.
    fn line(&self, content: String, done: Option<(&Finished, &str)>) -> Value {
        let mut v = json!({"model": self.model, "created_at": rfc3339(SystemTime::now())});
        match self.kind {
            Kind::Chat => v["message"] = json!({"role": "assistant", "content": content}),
            Kind::Generate => v["response"] = content.into(),
        }
        v["done"] = done.is_some().into();
        if let Some((f, reason)) = done {
            v["done_reason"] = reason.into();
            v["total_duration"] = nanos(f.finished - f.arrived).into();
            v["load_duration"] = nanos(f.load).into();
            v["prompt_eval_count"] = self.prompt_tokens.into();
            v["prompt_eval_duration"] = nanos(f.prefill).into();
            v["eval_count"] = f.tokens.into();
            v["eval_duration"] = nanos(f.finished - f.admitted - f.prefill).into();
        }
        v
    }
}

fn reason(cut: bool) -> &'static str {
    if cut {
        "length"
    } else {
        "stop"
    }
}

async fn chat(State(app): State<Arc<App>>, Extension(conn): Extension<ConnHandle>, body: Bytes) -> Response {
    infer(app, conn, body, Kind::Chat).await
}

async fn generate(State(app): State<Arc<App>>, Extension(conn): Extension<ConnHandle>, body: Bytes) -> Response {
    infer(app, conn, body, Kind::Generate).await
}

async fn infer(app: Arc<App>, conn: ConnHandle, body: Bytes, kind: Kind) -> Response {
    let flight = app.enter();
    let (v, model, ka) = match admit(&app, &body) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let (prompt_tokens, load_only) = match kind {
        Kind::Chat => {
            let n = v["messages"].as_array().map_or(0, Vec::len);
            (message_tokens(&v["messages"]), n == 0)
        }
        Kind::Generate => {
            let prompt = v["prompt"].as_str().unwrap_or("");
            (estimate_tokens(prompt), prompt.is_empty())
        }
    };
    let num_predict =
        v["options"]["num_predict"].as_i64().filter(|n| *n >= 0).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let stream = v["stream"].as_bool().unwrap_or(true) && !load_only;
    let meta = Meta { kind, model: model.clone(), prompt_tokens };
    let sample = Finished { id: 0, tokens: 8, arrived: 0.0, admitted: 0.0, finished: 0.0, load: 0.0, prefill: 0.0 };
    let rendered = || {
        let full = meta.line(completion_text(8), Some((&sample, "stop")));
        (full.to_string().into_bytes(), "application/json; charset=utf-8")
    };
    if let Some(resp) = app.fault(&body, &conn, rendered).await {
        return resp;
    }
    let spec = Spec {
        model: canonical(&model),
        prompt_tokens,
        max_tokens: if load_only { Some(0) } else { num_predict },
        stream,
        embed: false,
        inputs: 0,
        opts: runner_opts(&v["options"]),
        keep_alive: ka,
    };
    let Ok(mut run) = app.start(spec) else {
        return app.busy();
    };
    if stream {
        let body = stream_body(run, flight, move |piece, cut| {
            let line = match piece {
                Piece::Token(i) => meta.line(token_text(i).to_string(), None),
                Piece::Done(f) => meta.line(String::new(), Some((f, reason(cut)))),
            };
            format!("{line}\n").into_bytes()
        });
        return ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
    }
    let Some(done) = run.finish().await else {
        return gone(&app);
    };
    flight.succeed(done.tokens);
    let why = match (load_only, ka) {
        (true, Some(KeepAlive::For(0.0))) => "unload",
        (true, _) => "load",
        (false, _) => reason(run.cut),
    };
    Json(meta.line(app.answer_text(&body, done.tokens), Some((&done, why)))).into_response()
}

fn gone(app: &App) -> Response {
    let status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    app.error(status, "server is shutting down", "unavailable_error")
}

async fn embed(State(app): State<Arc<App>>, Extension(conn): Extension<ConnHandle>, body: Bytes) -> Response {
    let flight = app.enter();
    let (v, model, ka) = match admit(&app, &body) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let inputs = string_or_list(&v["input"]);
    if inputs.is_empty() {
        return app.bad_request("input must be a string or an array of strings");
    }
    if let Some(refused) = app.refuse_embedding(&inputs) {
        return refused;
    }
    let prompt_tokens: u32 = inputs.iter().map(|i| estimate_tokens(i)).sum();
    let render = |f: Option<&Finished>| {
        let vectors: Vec<Vec<f32>> = inputs.iter().map(|i| embedding(i)).collect();
        json!({
            "model": model,
            "embeddings": vectors,
            "total_duration": f.map_or(0, |f| nanos(f.finished - f.arrived)),
            "load_duration": f.map_or(0, |f| nanos(f.load)),
            "prompt_eval_count": prompt_tokens,
        })
    };
    let rendered = || (render(None).to_string().into_bytes(), "application/json; charset=utf-8");
    if let Some(resp) = app.fault(&body, &conn, rendered).await {
        return resp;
    }
    let spec = Spec {
        model: canonical(&model),
        prompt_tokens,
        max_tokens: None,
        stream: false,
        embed: true,
        inputs: u32::try_from(inputs.len()).unwrap_or(u32::MAX),
        opts: runner_opts(&v["options"]),
        keep_alive: ka,
    };
    let Ok(mut run) = app.start(spec) else {
        return app.busy();
    };
    let Some(done) = run.finish().await else {
        return gone(&app);
    };
    flight.embedded(inputs.len());
    Json(render(Some(&done))).into_response()
}

async fn tags(State(app): State<Arc<App>>) -> Json<Value> {
    let models: Vec<Value> = app.cfg.models.iter().map(|m| model_entry(m)).collect();
    Json(json!({ "models": models }))
}

async fn ps(State(app): State<Arc<App>>) -> Json<Value> {
    let Some(rt) = &app.runtime else {
        return Json(json!({"models": []}));
    };
    let (loaded, now) = rt.loaded();
    let wall_now = SystemTime::now();
    let models: Vec<Value> = loaded
        .iter()
        .map(|m| {
            let expires = match m.expires_at {
                Some(at) => wall_now + rt.to_wall(at - now),
                // Ollama shows "forever" as its maximum duration from now.
                None => wall_now + Duration::from_secs(292 * 365 * 86_400),
            };
            let mut entry = model_entry(&m.name);
            entry["expires_at"] = rfc3339(expires).into();
            entry["size_vram"] = 0.into();
            entry["context_length"] = 4096.into();
            entry
        })
        .collect();
    Json(json!({ "models": models }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go_and_ollama() {
        assert_eq!(parse_duration("5m"), Some(300.0));
        assert_eq!(parse_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_duration("1.5s"), Some(1.5));
        assert_eq!(parse_duration("-1"), Some(-1.0));
        assert_eq!(parse_duration("-1m"), Some(-60.0));
        assert_eq!(parse_duration("0"), Some(0.0));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(keep_alive(&json!(-1)), Ok(Some(KeepAlive::Forever)));
        assert_eq!(keep_alive(&json!("10s")), Ok(Some(KeepAlive::For(10.0))));
        assert!(keep_alive(&json!(true)).is_err());
    }
}
