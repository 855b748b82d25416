//! The OpenAI-compatible API, shaped like llama-server's and vLLM's:
//! chat and text completions (optionally streamed as SSE), embeddings,
//! the model list, `/health` and llama-server's `/props`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::app::{stream_body, App, Flight, Piece, Spec};
use crate::scheduler::RunnerOpts;
use crate::server::ConnHandle;
use crate::wire::{completion_text, embedding, estimate_tokens, message_tokens, string_or_list, token_text, unix_secs};

/// Routes of the OpenAI-compatible server.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/props", get(props))
        .with_state(app)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Chat,
    Text,
}

/// What every rendering of one answer shares.
#[derive(Debug)]
struct Meta {
    kind: Kind,
    id: u64,
    model: String,
    created: u64,
    prompt_tokens: u32,
}

impl Meta {
    fn id(&self) -> String {
        match self.kind {
            Kind::Chat => format!("chatcmpl-{}", self.id),
            Kind::Text => format!("cmpl-{}", self.id),
        }
    }

    fn usage(&self, tokens: u32) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": self.prompt_tokens + tokens,
        })
    }

    fn full(&self, text: String, tokens: u32, cut: bool) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(cut),
            }),
            Kind::Text => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(cut),
            }),
        };
        json!({
            "id": self.id(),
            "object": match self.kind { Kind::Chat => "chat.completion", Kind::Text => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(tokens),
        })
    }

    fn chunk(&self, piece: Piece<'_>, cut: bool) -> Vec<u8> {
        let (content, finish, usage) = match piece {
            Piece::Token(i) => (Some(token_text(i)), Value::Null, None),
            Piece::Done(f) => (None, finish_reason(cut).into(), Some(self.usage(f.tokens))),
        };
        let choice = match self.kind {
            Kind::Chat => {
                let delta = match content {
                    Some(c) => json!({"role": "assistant", "content": c}),
                    None => json!({}),
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": 0, "text": content.unwrap_or(""), "finish_reason": finish})
            }
        };
        let mut chunk = json!({
            "id": self.id(),
            "object": match self.kind { Kind::Chat => "chat.completion.chunk", Kind::Text => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        let done = usage.is_some();
        if let Some(u) = usage {
            chunk["usage"] = u;
        }
        let mut out = format!("data: {chunk}\n\n");
        if done {
            out.push_str("data: [DONE]\n\n");
        }
        out.into_bytes()
    }
}

fn finish_reason(cut: bool) -> &'static str {
    if cut {
        "length"
    } else {
        "stop"
    }
}

async fn chat(State(app): State<Arc<App>>, Extension(conn): Extension<ConnHandle>, body: Bytes) -> Response {
    generate(app, conn, body, Kind::Chat).await
}

async fn completions(State(app): State<Arc<App>>, Extension(conn): Extension<ConnHandle>, body: Bytes) -> Response {
    generate(app, conn, body, Kind::Text).await
}

/// Parses the body and checks the model; `Err` is the response to send instead.
fn admit(app: &App, body: &[u8]) -> Result<(Value, String), Box<Response>> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Box::new(app.bad_request(&format!("invalid JSON body: {e}"))))?;
    let model =
        v["model"].as_str().unwrap_or_else(|| app.cfg.models.first().map_or("sim-model", |m| m.as_str())).to_string();
    if app.is_missing(&model, |a, b| a == b) {
        return Err(Box::new(app.not_found(&format!("model '{model}' not found"))));
    }
    Ok((v, model))
}

async fn generate(app: Arc<App>, conn: ConnHandle, body: Bytes, kind: Kind) -> Response {
    let flight = app.enter();
    let (v, model) = match admit(&app, &body) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let prompt_tokens = match kind {
        Kind::Chat => message_tokens(&v["messages"]),
        Kind::Text => string_or_list(&v["prompt"]).iter().map(|p| estimate_tokens(p)).sum(),
    };
    let max_tokens = ["max_tokens", "max_completion_tokens", "n_predict"]
        .iter()
        .find_map(|k| v[k].as_i64())
        .filter(|n| *n >= 0)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let stream = v["stream"].as_bool().unwrap_or(false);
    let mut meta = Meta { kind, id: 0, model: model.clone(), created: unix_secs(), prompt_tokens };
    let rendered = || (meta.full(completion_text(8), 8, false).to_string().into_bytes(), "application/json");
    if let Some(resp) = app.fault(&body, &conn, rendered).await {
        return resp;
    }
    let spec = Spec {
        model,
        prompt_tokens,
        max_tokens,
        stream,
        embed: false,
        inputs: 0,
        opts: RunnerOpts::default(),
        keep_alive: None,
    };
    let Ok(mut run) = app.start(spec) else {
        return app.busy();
    };
    meta.id = run.id;
    if stream {
        let body = stream_body(run, flight, move |piece, cut| meta.chunk(piece, cut));
        return ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body)
            .into_response();
    }
    let Some(done) = run.finish().await else {
        return gone(&app);
    };
    flight.succeed(done.tokens);
    Json(meta.full(app.answer_text(&body, done.tokens), done.tokens, run.cut)).into_response()
}

/// The answer when the server is shut down under a waiting request.
fn gone(app: &App) -> Response {
    app.error(axum::http::StatusCode::SERVICE_UNAVAILABLE, "server is shutting down", "unavailable_error")
}

async fn embeddings(State(app): State<Arc<App>>, Extension(conn): Extension<ConnHandle>, body: Bytes) -> Response {
    let flight: Flight = app.enter();
    let (v, model) = match admit(&app, &body) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let inputs = string_or_list(&v["input"]);
    if inputs.is_empty() {
        return app.bad_request("'input' must be a string or an array of strings");
    }
    if let Some(refused) = app.refuse_embedding(&inputs) {
        return refused;
    }
    let prompt_tokens: u32 = inputs.iter().map(|i| estimate_tokens(i)).sum();
    let render = || {
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embedding(text)}))
            .collect();
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        })
    };
    if let Some(resp) = app.fault(&body, &conn, || (render().to_string().into_bytes(), "application/json")).await {
        return resp;
    }
    let spec = Spec {
        model: model.clone(),
        prompt_tokens,
        max_tokens: None,
        stream: false,
        embed: true,
        inputs: u32::try_from(inputs.len()).unwrap_or(u32::MAX),
        opts: RunnerOpts::default(),
        keep_alive: None,
    };
    let Ok(mut run) = app.start(spec) else {
        return app.busy();
    };
    if run.finish().await.is_none() {
        return gone(&app);
    }
    flight.embedded(inputs.len());
    Json(render()).into_response()
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let created = unix_secs();
    let data: Vec<Value> = app
        .cfg
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": created, "owned_by": "inflight-sim"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn props(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"total_slots": app.cfg.lanes.max(1)}))
}
