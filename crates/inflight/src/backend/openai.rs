//! The OpenAI-compatible API: llama-server, vLLM, LM Studio, SGLang.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::http::Http;
use super::{
    cached_of, usage_of, Answer, Api, ApiKey, Backend, BackendError, ServerInfo, ServerKind, Streamed, TokenClock,
};
use crate::job::Endpoint;

/// A server speaking `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings`.
pub struct OpenAiBackend {
    http: Http,
}

impl OpenAiBackend {
    /// A backend for the server at `url`.
    pub fn new(url: &str, api_key: Option<ApiKey>, timeout: Duration) -> Result<OpenAiBackend, BackendError> {
        Ok(OpenAiBackend { http: Http::new(url, api_key, timeout)? })
    }
}

#[async_trait]
impl Backend for OpenAiBackend {
    async fn send(&self, endpoint: Endpoint, body: &str) -> Result<Answer, BackendError> {
        let reply = self.http.post(endpoint.path(), body.to_owned()).await?;
        let header_id = reply.headers.get("x-request-id").and_then(|v| v.to_str().ok());
        let answer = answer_of(endpoint, &reply.body, reply.text, header_id)?;
        Ok(Answer { status_code: reply.status, first_byte: Some(reply.first_byte), ..answer })
    }

    async fn stream(&self, endpoint: Endpoint, body: &str) -> Result<Streamed, BackendError> {
        let mut v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| BackendError::malformed_by(e.to_string(), e))?;
        v["stream"] = true.into();
        // Without this, OpenAI-compatible servers leave the token count out of a stream.
        v["stream_options"] = serde_json::json!({"include_usage": true});
        let mut clock = TokenClock::default();
        let started = std::time::Instant::now();
        self.http.post_stream(endpoint.path(), v.to_string(), |line, at| clock.openai_line(line, at)).await?;
        clock.finish(started.elapsed())
    }

    async fn metrics(&self) -> Option<String> {
        self.http.get_text("/metrics", Duration::from_secs(5)).await
    }

    async fn probe(&self) -> Result<ServerInfo, BackendError> {
        let reply = self.http.get("/v1/models", Duration::from_secs(5)).await?;
        let data = reply.body["data"].as_array().cloned().unwrap_or_default();
        let models = data.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect();
        let owner = data.first().and_then(|m| m["owned_by"].as_str()).unwrap_or_default().to_owned();
        // llama-server answers /props with its slot count; the others say who they are in `owned_by`.
        let props = self.http.get("/props", Duration::from_secs(5)).await;
        let identity =
            props.as_ref().ok().and_then(|p| p.body["model_path"].as_str()).map(|p| format!("llama-server:{p}"));
        let kind = match props {
            Ok(props) if props.body.get("total_slots").is_some() => {
                ServerKind::LlamaServer { slots: props.body["total_slots"].as_u64() }
            }
            // A router (`--models-dir`) starts a llama-server per model with the `--parallel` its models list.
            Ok(props) if props.body["role"] == "router" => ServerKind::LlamaServer { slots: router_parallel(&data) },
            _ if owner == "vllm" => ServerKind::Vllm,
            _ if owner == "organization_owner" => ServerKind::LmStudio,
            _ => ServerKind::Unknown,
        };
        let description = match kind {
            ServerKind::LlamaServer { slots: Some(n) } => format!("llama-server with {n} slots"),
            ServerKind::LlamaServer { slots: None } => "llama-server".into(),
            ServerKind::Vllm => "vLLM".into(),
            ServerKind::LmStudio => "LM Studio".into(),
            _ => "OpenAI-compatible server".into(),
        };
        Ok(ServerInfo { models, description, kind, identity, loaded: router_loaded(&data) })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.http.get("/v1/models", Duration::from_secs(5)).await.map(|_| ())
    }

    fn api(&self) -> Api {
        Api::Openai
    }

    fn url(&self) -> &str {
        self.http.base()
    }
}

/// Reads a 2xx answer for `endpoint` (`body` parsed from `text`): `Err` (malformed) unless it has the endpoint's
/// shape (`choices`, or `data` for embeddings); token counts and the finish reason come from it, the id from the
/// `x-request-id` header, else the body's `id`. The status is 200 and the timing unset: the caller fills them in.
pub fn answer_of(
    endpoint: Endpoint,
    body: &Value,
    text: String,
    header_id: Option<&str>,
) -> Result<Answer, BackendError> {
    let shape_ok = match endpoint {
        Endpoint::Embedding => body["data"].is_array(),
        _ => body["choices"].is_array(),
    };
    if !shape_ok {
        return Err(BackendError::malformed(format!("a 2xx answer without the {} shape", endpoint.path())));
    }
    let (prompt_tokens, completion_tokens, finish_reason) = usage_of(body);
    let request_id = header_id.map(str::to_owned).or_else(|| body["id"].as_str().map(str::to_owned));
    Ok(Answer {
        status_code: 200,
        request_id,
        body: text,
        prompt_tokens,
        completion_tokens,
        cached_tokens: cached_of(body),
        finish_reason,
        first_byte: None,
        load: None,
    })
}

/// The `--parallel` a llama-server router starts its models with (the largest, if they differ), read from the
/// command lines `/v1/models` lists under each model's `status.args`.
fn router_parallel(models: &[Value]) -> Option<u64> {
    let parallel = |m: &Value| -> Option<u64> {
        let args: Vec<&str> = m["status"]["args"].as_array()?.iter().filter_map(Value::as_str).collect();
        let at = args.iter().position(|a| matches!(*a, "--parallel" | "-np"))?;
        args.get(at + 1)?.parse().ok()
    };
    models.iter().filter_map(parallel).max()
}

/// The models a llama-server router has loaded now (`status.value` of each model it lists); `None` for a server
/// that does not say (it serves every model it lists).
fn router_loaded(models: &[Value]) -> Option<Vec<String>> {
    if !models.iter().any(|m| m["status"]["value"].is_string()) {
        return None;
    }
    let loaded = models.iter().filter(|m| m["status"]["value"] == "loaded");
    Some(loaded.filter_map(|m| m["id"].as_str().map(str::to_owned)).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_routers_parallel_is_read_from_its_models_command_lines() {
        let model = |args: &[&str]| json!({"id": "m", "status": {"value": "unloaded", "args": args}});
        let models =
            [model(&["llama-server", "--parallel", "4", "--threads", "2"]), model(&["llama-server", "-np", "2"])];
        assert_eq!(super::router_parallel(&models), Some(4));
        assert_eq!(super::router_parallel(&[model(&["llama-server", "--threads", "2"])]), None);
    }

    #[test]
    fn a_routers_loaded_models_are_those_its_status_says() {
        let model = |id: &str, status: &str| json!({"id": id, "status": {"value": status}});
        let models = [model("a", "loaded"), model("b", "unloaded"), model("c", "loading")];
        assert_eq!(super::router_loaded(&models), Some(vec!["a".to_string()]));
        assert_eq!(super::router_loaded(&[json!({"id": "m", "owned_by": "vllm"})]), None, "serves what it lists");
    }
}
