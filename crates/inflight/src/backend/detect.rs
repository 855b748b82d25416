//! Finding the server: the URL given or the usual local ports, and which API it speaks.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::http::Http;
use super::{
    Api, ApiKey, Backend, BackendError, InputsPerRequest, OllamaBackend, OpenAiBackend, PackingBackend, ServerInfo,
};

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
    /// How many embedding inputs one request may carry: more than one puts a [`PackingBackend`] around the
    /// server's backend (`run`, `serve`); `bench` and `doctor` measure requests as they are and take 1.
    pub inputs_per_request: InputsPerRequest,
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
            // A server given by name gets a few tries: one reset or garbled answer from a flaky proxy is not a
            // server to refuse. No answer at all, or refused credentials, is said at once.
            let mut tries = 1;
            loop {
                match connect_one(&url, api, opts).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) if e.transient && tries < CONNECT_TRIES => {
                        tracing::debug!(server = url, "connecting, try {tries}: {}", e.reason);
                        tokio::time::sleep(Duration::from_millis(250 << tries)).await;
                        tries += 1;
                    }
                    Err(e) => return Err(ConnectError::Unusable { url, reason: e.reason }),
                }
            }
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

/// Tries at connecting to a server given by name, when its failures look transient.
const CONNECT_TRIES: u32 = 3;

/// Why a server cannot be used, and whether trying again may help.
struct Unusable {
    reason: String,
    transient: bool,
}

impl Unusable {
    fn from(e: &BackendError) -> Unusable {
        Unusable { reason: describe(e), transient: transient(e) }
    }

    fn setup(e: BackendError) -> Unusable {
        Unusable { reason: e.to_string(), transient: false }
    }
}

/// Whether a failure to connect may pass: not "nobody there" and not refused credentials.
fn transient(e: &BackendError) -> bool {
    !matches!(e, BackendError::Connect { .. } | BackendError::Status { status: 401 | 403, .. }) && e.is_retryable()
}

async fn connect_one(url: &str, api: Option<Api>, opts: &ConnectOptions) -> Result<Connection, Unusable> {
    let api = match api {
        Some(api) => api,
        None => detect(url, opts).await?,
    };
    let backend: Arc<dyn Backend> = match api {
        Api::Openai => {
            Arc::new(OpenAiBackend::new(url, opts.api_key.clone(), opts.request_timeout).map_err(Unusable::setup)?)
        }
        Api::Ollama => Arc::new(
            OllamaBackend::new(url, opts.api_key.clone(), opts.request_timeout, opts.runner_options.clone())
                .map_err(Unusable::setup)?,
        ),
    };
    let info = backend.probe().await.map_err(|e| Unusable::from(&e))?;
    let backend: Arc<dyn Backend> = match opts.inputs_per_request {
        InputsPerRequest::Fixed(1) => backend,
        per_request => Arc::new(PackingBackend::new(backend, per_request)),
    };
    Ok(Connection { backend, info })
}

async fn detect(url: &str, opts: &ConnectOptions) -> Result<Api, Unusable> {
    let http = Http::new(url, opts.api_key.clone(), opts.request_timeout).map_err(Unusable::setup)?;
    let short = Duration::from_secs(3);
    // Ollama also serves /v1/models, so ask the Ollama-only endpoint first.
    match http.get("/api/version", short).await {
        Ok(r) if r.body["version"].is_string() => return Ok(Api::Ollama),
        Err(e @ (BackendError::Connect { .. } | BackendError::Timeout(_))) => return Err(Unusable::from(&e)),
        _ => {}
    }
    match http.get("/v1/models", short).await {
        Ok(_) => Ok(Api::Openai),
        Err(e) => Err(Unusable {
            reason: format!("answers neither Ollama's /api/version nor OpenAI's /v1/models ({})", describe(&e)),
            transient: transient(&e),
        }),
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
    fn a_reset_or_garbled_answer_is_tried_again_but_nobody_there_or_refused_credentials_are_not() {
        let status = |s| BackendError::Status { status: s, message: String::new(), body: None, retry_after: None };
        for (e, again) in [
            (BackendError::malformed("garbage"), true),
            (BackendError::reset("reset by peer"), true),
            (BackendError::Timeout(Duration::from_secs(3)), true),
            (status(500), true),
            (status(503), true),
            (status(401), false),
            (status(403), false),
            (status(404), false),
            (BackendError::connect("refused", std::io::Error::other("refused")), false),
        ] {
            assert_eq!(transient(&e), again, "{e}");
        }
    }

    #[test]
    fn normalizes_urls() {
        assert_eq!(normalize("localhost:8080/"), "http://localhost:8080");
        assert_eq!(normalize("http://h:1/v1"), "http://h:1");
    }
}
