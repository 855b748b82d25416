//! HTTP plumbing shared by the backends: one pooled client, error classification, error-message extraction.

use std::error::Error as _;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;

use super::{ApiKey, BackendError};

/// The most of an answer inflight reads: a larger one fails that attempt (as a malformed answer, retried)
/// instead of growing the process without bound. Embeddings of a few hundred long inputs fit well within it.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 << 20;
/// The most of an error answer's body kept for its message and record.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// A pooled HTTP client for one server.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    api_key: Option<ApiKey>,
    timeout: Duration,
}

/// A 2xx answer's parsed body.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
    pub first_byte: Duration,
}

impl Http {
    /// A client for `base` (no trailing slash) with a per-request `timeout`.
    pub fn new(base: &str, api_key: Option<ApiKey>, timeout: Duration) -> Result<Http, BackendError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| BackendError::connect(e.to_string(), e))?;
        Ok(Http { client, base: base.trim_end_matches('/').to_owned(), api_key, timeout })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// POSTs a JSON body and returns the parsed 2xx answer.
    pub async fn post(&self, path: &str, body: String) -> Result<Reply, BackendError> {
        self.execute(self.post_request(path).body(body), self.timeout).await
    }

    /// GETs a JSON document with a short timeout (probes).
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<Reply, BackendError> {
        let req = ApiKey::authorize(self.api_key.as_ref(), self.client.get(format!("{}{path}", self.base)));
        self.execute(req, timeout).await
    }

    /// POSTs a JSON body whose answer streams, handing each line (without its newline) to `on_line` with the
    /// time since sending, as it arrives. Returns the status and the time to the response headers.
    pub async fn post_stream(
        &self,
        path: &str,
        body: String,
        mut on_line: impl FnMut(&str, Duration),
    ) -> Result<(u16, Duration), BackendError> {
        let started = Instant::now();
        // A fresh connection per stream: llama-server closes the connection after a streamed answer without
        // saying so, and a pooled connection reused after that fails at once ("connection closed before message
        // completed": a quarter to a third of the requests of a bench before this). On loopback a connection
        // costs nothing.
        let req = self.post_request(path).header(reqwest::header::CONNECTION, "close").body(body);
        let work = async {
            let (mut resp, first_byte) = self.response(req, started).await?;
            let status = resp.status().as_u16();
            let mut pending: Vec<u8> = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(classify)? {
                let at = started.elapsed();
                pending.extend_from_slice(&chunk);
                if pending.len() > MAX_ANSWER_BYTES {
                    return Err(too_large());
                }
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    on_line(String::from_utf8_lossy(&line).trim_end(), at);
                }
            }
            if !pending.is_empty() {
                on_line(String::from_utf8_lossy(&pending).trim_end(), started.elapsed());
            }
            Ok::<_, BackendError>((status, first_byte))
        };
        tokio::time::timeout(self.timeout, work).await.map_err(|_| BackendError::Timeout(self.timeout))?
    }

    fn post_request(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.post(format!("{}{path}", self.base)).header(CONTENT_TYPE, "application/json");
        ApiKey::authorize(self.api_key.as_ref(), req)
    }

    /// Sends a request and returns its 2xx response (headers read, body not yet); a non-2xx answer becomes
    /// a [`BackendError::Status`] carrying the server's own message.
    async fn response(
        &self,
        req: reqwest::RequestBuilder,
        started: Instant,
    ) -> Result<(reqwest::Response, Duration), BackendError> {
        let resp = req.send().await.map_err(classify)?;
        let first_byte = started.elapsed();
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok((resp, first_byte));
        }
        let headers = resp.headers().clone();
        let text = match read_capped(resp, MAX_ERROR_BYTES).await? {
            Capped::Whole(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Capped::Cut(bytes) => format!("{}…", String::from_utf8_lossy(&bytes)),
        };
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let message = parsed.as_ref().and_then(error_message).unwrap_or_else(|| short(&text, status));
        Err(BackendError::Status { status, message, body: parsed.map(|_| text), retry_after: retry_after(&headers) })
    }

    async fn execute(&self, req: reqwest::RequestBuilder, timeout: Duration) -> Result<Reply, BackendError> {
        let started = Instant::now();
        let work = async {
            let (resp, first_byte) = self.response(req, started).await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let Capped::Whole(bytes) = read_capped(resp, MAX_ANSWER_BYTES).await? else {
                return Err(too_large());
            };
            Ok::<_, BackendError>((status, headers, bytes, first_byte))
        };
        let (status, headers, bytes, first_byte) =
            tokio::time::timeout(timeout, work).await.map_err(|_| BackendError::Timeout(timeout))??;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| BackendError::malformed_by(format!("{e} in a {}-byte answer", bytes.len()), e))?;
        Ok(Reply { status, headers, body, text, first_byte })
    }

    /// GETs a text document (e.g. Prometheus `/metrics`) with a short timeout; `None` unless it answers 2xx.
    pub async fn get_text(&self, path: &str, timeout: Duration) -> Option<String> {
        let req = ApiKey::authorize(self.api_key.as_ref(), self.client.get(format!("{}{path}", self.base)));
        let work = async {
            let (resp, _) = self.response(req, Instant::now()).await.ok()?;
            resp.text().await.ok()
        };
        tokio::time::timeout(timeout, work).await.ok().flatten()
    }
}

/// A body read up to a limit.
enum Capped {
    /// All of it.
    Whole(Vec<u8>),
    /// Its first `limit` bytes; the rest was not read.
    Cut(Vec<u8>),
}

/// Reads `resp`'s body, stopping at `limit` bytes (at once when its `Content-Length` says it is larger).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Capped, BackendError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(Capped::Cut(Vec::new()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Ok(Capped::Cut(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(body))
}

fn too_large() -> BackendError {
    BackendError::malformed(format!(
        "the answer is larger than {} MiB, the most inflight reads; the rest was not read",
        MAX_ANSWER_BYTES >> 20
    ))
}

fn classify(e: reqwest::Error) -> BackendError {
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    if e.is_connect() {
        BackendError::connect(detail, e)
    } else if e.is_timeout() {
        BackendError::Timeout(Duration::ZERO)
    } else {
        // Includes a body that stopped short (truncated answer, connection dropped mid-body): the connection
        // was lost, and the outage check decides whether that is the server going away.
        BackendError::reset_by(detail, e)
    }
}

/// The server's own message from `{"error": {"message": ...}}`, `{"error": "..."}` or `{"message": ...}`.
fn error_message(v: &Value) -> Option<String> {
    let e = &v["error"];
    e["message"]
        .as_str()
        .or_else(|| e.as_str())
        .or_else(|| v["message"].as_str())
        .or_else(|| v["detail"].as_str())
        .map(str::to_owned)
}

fn short(text: &str, status: u16) -> String {
    let t = text.trim();
    if t.is_empty() {
        return format!("HTTP {status} with an empty body");
    }
    t.chars().take(300).collect()
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_error_messages_in_known_shapes() {
        assert_eq!(error_message(&json!({"error": {"message": "a"}})).as_deref(), Some("a"));
        assert_eq!(error_message(&json!({"error": "b"})).as_deref(), Some("b"));
        assert_eq!(error_message(&json!({"detail": "c"})).as_deref(), Some("c"));
        assert_eq!(error_message(&json!({"x": 1})), None);
    }

    #[tokio::test]
    async fn a_refused_connection_keeps_the_transport_error() {
        // A port nothing listens on: bind one, then let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let http = Http::new(&format!("http://127.0.0.1:{port}"), None, Duration::from_secs(5)).unwrap();
        let e = http.get("/v1/models", Duration::from_secs(5)).await.err().expect("nothing listens there");
        assert!(matches!(e, BackendError::Connect { .. }), "{e:?}");
        assert!(e.is_unreachable());
        let cause = e.source().expect("the transport error is kept");
        let transport = cause.downcast_ref::<reqwest::Error>().expect("a reqwest::Error");
        assert!(transport.is_connect());
        // The message is what it was: the transport error and its causes, after the kind.
        let mut chain = transport.to_string();
        let mut next = transport.source();
        while let Some(s) = next {
            chain = format!("{chain}: {s}");
            next = s.source();
        }
        assert_eq!(e.to_string(), format!("cannot connect: {chain}"));
    }

    #[test]
    fn parses_retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
