//! Finding the server: the URL given or the usual local ports, and which API it speaks.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::http::Http;
use super::{Api, ApiKey, Backend, BackendError, OllamaBackend, OpenAiBackend, ServerInfo};

/// The ports local servers listen on by default: Ollama, llama-server (8080, and 9931, which newer builds
/// announce as their default), vLLM, LM Studio, SGLang.
pub const DEFAULT_PORTS: &[(u16, &str)] = &[
    (11434, "Ollama"),
    (8080, "llama-server"),
    (9931, "llama-server"),
    (8000, "vLLM"),
    (1234, "LM Studio"),
    (30000, "SGLang"),
];

/// A server we can talk to, and what it said about itself.
pub struct Connection {
    /// The backend for it.
    pub backend: Arc<dyn Backend>,
    /// Its answer to the probe.
    pub info: ServerInfo,
}

/// Why no server could be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No `--server` and nothing answers on the usual ports.
    #[error(
        "no server found; tried {tried}.\nStart one, e.g. `ollama serve` or `llama-server -m MODEL.gguf --port 8080 -np 4`, \
         or pass --server URL"
    )]
    NoServer {
        /// The URLs tried, comma separated.
        tried: String,
    },
    /// The server given does not answer, or answers like neither API.
    #[error("server {url} {reason}")]
    Unusable {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Options every backend gets.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Bearer token, if the server needs one.
    pub api_key: Option<ApiKey>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Ollama runner options fixed for the run.
    pub runner_options: Map<String, Value>,
}

/// Connects to `server` (or the first usual local port that answers), detecting its API unless `api` is given.
pub async fn connect(
    server: Option<&str>,
    api: Option<Api>,
    opts: &ConnectOptions,
) -> Result<Connection, ConnectError> {
    match server {
        Some(url) => {
            let url = normalize(url);
            connect_one(&url, api, opts).await.map_err(|reason| ConnectError::Unusable { url, reason })
        }
        None => {
            let mut tried = Vec::new();
            for (port, name) in DEFAULT_PORTS {
                let url = format!("http://127.0.0.1:{port}");
                if let Ok(conn) = connect_one(&url, api, opts).await {
                    return Ok(conn);
                }
                tried.push(format!("{url} ({name})"));
            }
            Err(ConnectError::NoServer { tried: tried.join(", ") })
        }
    }
}

/// A base URL as backends hold it: a scheme, no trailing `/` or `/v1`.
pub(crate) fn normalize(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let url = url.strip_suffix("/v1").unwrap_or(url);
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

async fn connect_one(url: &str, api: Option<Api>, opts: &ConnectOptions) -> Result<Connection, String> {
    let api = match api {
        Some(api) => api,
        None => detect(url, opts).await?,
    };
    let backend: Arc<dyn Backend> = match api {
        Api::Openai => {
            Arc::new(OpenAiBackend::new(url, opts.api_key.clone(), opts.request_timeout).map_err(|e| e.to_string())?)
        }
        Api::Ollama => Arc::new(
            OllamaBackend::new(url, opts.api_key.clone(), opts.request_timeout, opts.runner_options.clone())
                .map_err(|e| e.to_string())?,
        ),
    };
    let info = backend.probe().await.map_err(|e| describe(&e))?;
    Ok(Connection { backend, info })
}

async fn detect(url: &str, opts: &ConnectOptions) -> Result<Api, String> {
    let http = Http::new(url, opts.api_key.clone(), opts.request_timeout).map_err(|e| e.to_string())?;
    let short = Duration::from_secs(3);
    // Ollama also serves /v1/models, so ask the Ollama-only endpoint first.
    match http.get("/api/version", short).await {
        Ok(r) if r.body["version"].is_string() => return Ok(Api::Ollama),
        Err(e @ (BackendError::Connect { .. } | BackendError::Timeout(_))) => return Err(describe(&e)),
        _ => {}
    }
    match http.get("/v1/models", short).await {
        Ok(_) => Ok(Api::Openai),
        Err(e) => Err(format!("answers neither Ollama's /api/version nor OpenAI's /v1/models ({})", describe(&e))),
    }
}

fn describe(e: &BackendError) -> String {
    match e {
        BackendError::Connect { .. } => "does not answer (connection refused or unreachable)".into(),
        BackendError::Status { status: 401 | 403, message, .. } => {
            format!("refuses our credentials ({message}); pass --api-key or set INFLIGHT_API_KEY")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_urls() {
        assert_eq!(normalize("localhost:8080/"), "http://localhost:8080");
        assert_eq!(normalize("http://h:1/v1"), "http://h:1");
    }
}
