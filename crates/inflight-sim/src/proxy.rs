//! A fault-injecting HTTP proxy: forwards every request to an upstream server (the simulator, or a real
//! llama-server) and fails a configurable share of them in the ways a weekend run meets — connections reset
//! before or in the middle of an answer, stalls that never close, truncated bodies, a `Content-Length` that
//! promises more than comes, garbage with status 200, 500/502/503 (with and without `Retry-After`), bursts of
//! 429, a slow drip of one byte a second, and answers of 100 MB.
//!
//! The faults do not depend on the load: each attempt of each request draws its own, from a seed, the body's
//! hash and the attempt number ([`FaultPlan`]), so a retried request draws again and the same run draws the
//! same faults. A burst of 429 is the one correlated kind: the requests after the one that drew it are
//! refused too, whatever they are.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::faults::{truncated, FaultPlan};
use crate::server::{self, ConnHandle};

/// One kind of fault the proxy injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProxyFault {
    /// The connection is reset before any answer.
    ResetBefore,
    /// Half the upstream's answer is sent, then the connection is reset.
    ResetMidBody,
    /// No answer, and the connection is held open (until `stall_for` has passed).
    Stall,
    /// `Content-Length` promises the whole answer, half is sent, then the connection closes.
    Truncated,
    /// `Content-Length` promises more than the answer; all of it is sent, then nothing more (held open).
    LongLength,
    /// Status 200 with a body that is not JSON.
    Garbage,
    /// HTTP 500 with a JSON error body.
    Error500,
    /// HTTP 502 with an HTML body, as a reverse proxy answers when its upstream fails.
    Error502,
    /// HTTP 503 with `Retry-After: 1`.
    Error503RetryAfter,
    /// HTTP 503 without `Retry-After`.
    Error503,
    /// HTTP 429 with `Retry-After: 1`, for this request and the next [`ProxyConfig::burst`] − 1 of any kind,
    /// or fewer if [`ProxyConfig::burst_for`] passes first (a client that waits as told gets through).
    Burst429,
    /// The upstream's answer, one byte every `drip_every`.
    Drip,
    /// A 200 answer of [`ProxyConfig::huge_bytes`] (valid JSON, were it read to the end).
    Huge,
}

impl ProxyFault {
    /// Every kind, in the order the draw compares them.
    pub const ALL: [ProxyFault; 13] = [
        ProxyFault::ResetBefore,
        ProxyFault::ResetMidBody,
        ProxyFault::Stall,
        ProxyFault::Truncated,
        ProxyFault::LongLength,
        ProxyFault::Garbage,
        ProxyFault::Error500,
        ProxyFault::Error502,
        ProxyFault::Error503RetryAfter,
        ProxyFault::Error503,
        ProxyFault::Burst429,
        ProxyFault::Drip,
        ProxyFault::Huge,
    ];

    /// Its name on the command line and in the stats.
    pub fn name(self) -> &'static str {
        match self {
            ProxyFault::ResetBefore => "reset-before",
            ProxyFault::ResetMidBody => "reset-mid-body",
            ProxyFault::Stall => "stall",
            ProxyFault::Truncated => "truncated",
            ProxyFault::LongLength => "long-length",
            ProxyFault::Garbage => "garbage",
            ProxyFault::Error500 => "500",
            ProxyFault::Error502 => "502",
            ProxyFault::Error503RetryAfter => "503-retry-after",
            ProxyFault::Error503 => "503",
            ProxyFault::Burst429 => "429-burst",
            ProxyFault::Drip => "drip",
            ProxyFault::Huge => "huge",
        }
    }

    fn index(self) -> usize {
        ProxyFault::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

impl FromStr for ProxyFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ProxyFault::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ProxyFault::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault {s:?}; the kinds are {}", names.join(", "))
        })
    }
}

/// What the proxy forwards to and how it fails.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The upstream's base URL, e.g. `http://127.0.0.1:8080`.
    pub upstream: String,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Seed of the draws.
    pub seed: u64,
    /// Each kind's probability per attempt (mutually exclusive; their sum at most 1).
    pub rates: BTreeMap<ProxyFault, f64>,
    /// At most this many huge answers in all (the draws past it are forwarded as they are).
    pub huge_limit: u64,
    /// Size of a huge answer.
    pub huge_bytes: u64,
    /// Requests one burst of 429 refuses, the one that drew it included.
    pub burst: u32,
    /// The longest a burst of 429 lasts.
    pub burst_for: Duration,
    /// How long a stall (and a long `Content-Length`) holds the connection before closing it.
    pub stall_for: Duration,
    /// The pause between two bytes of a drip.
    pub drip_every: Duration,
}

impl ProxyConfig {
    /// Forwarding to `upstream` without faults.
    pub fn new(upstream: impl Into<String>) -> ProxyConfig {
        ProxyConfig {
            upstream: upstream.into().trim_end_matches('/').to_owned(),
            port: 0,
            seed: 0,
            rates: BTreeMap::new(),
            huge_limit: u64::MAX,
            huge_bytes: 100_000_000,
            burst: 5,
            burst_for: Duration::from_millis(500),
            stall_for: Duration::from_secs(120),
            drip_every: Duration::from_secs(1),
        }
    }

    /// About `total` of the requests faulted, spread evenly over every kind: a burst of 429 counted by the
    /// requests it refuses, so it is drawn [`ProxyConfig::burst`] times less often (set `burst` first).
    pub fn with_mix(mut self, total: f64) -> ProxyConfig {
        let each = total / ProxyFault::ALL.len() as f64;
        for kind in ProxyFault::ALL {
            let rate = if kind == ProxyFault::Burst429 { each / self.burst.max(1) as f64 } else { each };
            self.rates.insert(kind, rate);
        }
        self
    }

    /// One kind's probability.
    pub fn with_rate(mut self, kind: ProxyFault, p: f64) -> ProxyConfig {
        self.rates.insert(kind, p);
        self
    }

    /// The sum of the kinds' probabilities.
    pub fn total(&self) -> f64 {
        self.rates.values().sum()
    }
}

/// What the proxy did so far.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests received (the stats endpoint excluded).
    pub requests: u64,
    /// Requests whose answer came from the upstream and went back whole.
    pub forwarded: u64,
    /// Faults injected, by kind name (each 429 of a burst counted under `429-burst`).
    pub faults: BTreeMap<String, u64>,
    /// The longest a client waited on a stalled, dripping or overlong answer before it gave up (or the answer
    /// ended), in milliseconds: a client's request timeout shows here.
    pub longest_held_ms: u64,
}

struct Proxy {
    cfg: ProxyConfig,
    plan: FaultPlan<ProxyFault>,
    client: reqwest::Client,
    requests: AtomicU64,
    forwarded: AtomicU64,
    injected: [AtomicU64; 13],
    huge_sent: AtomicU64,
    longest_held_ms: AtomicU64,
    /// The current burst of 429: requests it still refuses, and when it ends at the latest.
    burst: Mutex<(u32, Option<Instant>)>,
    stop: watch::Receiver<bool>,
}

/// A running fault proxy on 127.0.0.1.
pub struct FaultProxy {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds and serves in background tasks of the current tokio runtime.
    pub async fn start(cfg: ProxyConfig) -> std::io::Result<FaultProxy> {
        if cfg.total() > 1.0 + 1e-9 {
            return Err(std::io::Error::other(format!("the fault rates add up to {:.3}, more than 1", cfg.total())));
        }
        let listener = server::bind(cfg.port)?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder().build().map_err(std::io::Error::other)?;
        let (stop, stopped) = watch::channel(false);
        let kinds = ProxyFault::ALL.iter().map(|&k| (cfg.rates.get(&k).copied().unwrap_or(0.0), k)).collect();
        let proxy = Arc::new(Proxy {
            plan: FaultPlan::new(kinds, 0, cfg.seed),
            cfg,
            client,
            requests: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            injected: Default::default(),
            huge_sent: AtomicU64::new(0),
            longest_held_ms: AtomicU64::new(0),
            burst: Mutex::new((0, None)),
            stop: stopped.clone(),
        });
        let router =
            Router::new().route("/proxy/stats", axum::routing::get(stats)).fallback(handle).with_state(proxy.clone());
        let accept = tokio::spawn(server::accept_loop(listener, router, stopped));
        Ok(FaultProxy { addr, proxy, stop, accept })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it did so far.
    pub fn stats(&self) -> ProxyStats {
        self.proxy.stats()
    }

    /// Stops listening and resets every open connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.accept).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    fn stats(&self) -> ProxyStats {
        let faults = ProxyFault::ALL
            .iter()
            .map(|k| (k.name().to_owned(), self.injected[k.index()].load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        ProxyStats {
            requests: self.requests.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            faults,
            longest_held_ms: self.longest_held_ms.load(Relaxed),
        }
    }

    fn count(&self, kind: ProxyFault) {
        self.injected[kind.index()].fetch_add(1, Relaxed);
    }

    /// This attempt's fault: the rest of a burst first, then the draw (a huge answer only while under its limit).
    fn fault(&self, body: &[u8]) -> Option<ProxyFault> {
        let now = Instant::now();
        let mut burst = self.burst.lock().unwrap_or_else(|e| e.into_inner());
        if burst.0 > 0 && burst.1.is_some_and(|until| now < until) {
            burst.0 -= 1;
            return Some(ProxyFault::Burst429);
        }
        let kind = self.plan.draw(body)?;
        match kind {
            ProxyFault::Huge if self.huge_sent.fetch_add(1, Relaxed) >= self.cfg.huge_limit => None,
            ProxyFault::Burst429 => {
                *burst = (self.cfg.burst.saturating_sub(1), Some(now + self.cfg.burst_for));
                Some(kind)
            }
            _ => Some(kind),
        }
    }

    /// Waits `d`, or until the proxy shuts down.
    async fn hold(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Measures how long a client is kept waiting: from its creation until it is dropped, which happens when the
/// answer ends or the client goes away (hyper drops the handler and the body with the connection).
struct Held {
    proxy: Arc<Proxy>,
    since: Instant,
}

impl Held {
    fn new(proxy: &Arc<Proxy>) -> Held {
        Held { proxy: proxy.clone(), since: Instant::now() }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.proxy.longest_held_ms.fetch_max(self.since.elapsed().as_millis() as u64, Relaxed);
    }
}

async fn stats(State(p): State<Arc<Proxy>>) -> Json<ProxyStats> {
    Json(p.stats())
}

async fn handle(State(p): State<Arc<Proxy>>, Extension(conn): Extension<ConnHandle>, req: Request) -> Response {
    p.requests.fetch_add(1, Relaxed);
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return status(StatusCode::PAYLOAD_TOO_LARGE, "request body over 64 MiB");
    };
    let fault = p.fault(&body);
    if let Some(kind) = fault {
        p.count(kind);
        if let Some(answer) = answer_without_upstream(&p, kind, &conn).await {
            return answer;
        }
    }
    let upstream = match forward(&p, &parts, body).await {
        Ok(u) => u,
        Err(e) => return status(StatusCode::BAD_GATEWAY, &format!("upstream failed: {e}")),
    };
    match fault {
        None => {
            p.forwarded.fetch_add(1, Relaxed);
            upstream.response()
        }
        Some(kind) => spoil(&p, kind, upstream, conn),
    }
}

/// The faults that need no upstream answer: `None` for those that spoil one.
async fn answer_without_upstream(p: &Arc<Proxy>, kind: ProxyFault, conn: &ConnHandle) -> Option<Response> {
    let retry_after = |mut r: Response| {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    };
    Some(match kind {
        ProxyFault::ResetBefore => {
            conn.reset();
            return std::future::pending().await;
        }
        ProxyFault::Stall => {
            let _held = Held::new(p);
            p.hold(p.cfg.stall_for).await;
            conn.reset();
            return std::future::pending().await;
        }
        ProxyFault::Garbage => {
            let mut r = Response::new(Body::from("\u{0}\u{1}not json {{{ <html>garbage"));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        ProxyFault::Error500 => status(StatusCode::INTERNAL_SERVER_ERROR, "injected internal server error"),
        ProxyFault::Error502 => {
            let mut r = Response::new(Body::from("<html><body><h1>502 Bad Gateway</h1></body></html>"));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            r
        }
        ProxyFault::Error503RetryAfter => retry_after(status(StatusCode::SERVICE_UNAVAILABLE, "injected overload")),
        ProxyFault::Error503 => status(StatusCode::SERVICE_UNAVAILABLE, "injected overload, no Retry-After"),
        ProxyFault::Burst429 => retry_after(status(StatusCode::TOO_MANY_REQUESTS, "injected rate limit")),
        ProxyFault::Huge => huge(p.cfg.huge_bytes),
        ProxyFault::ResetMidBody | ProxyFault::Truncated | ProxyFault::LongLength | ProxyFault::Drip => return None,
    })
}

/// The upstream's answer, read whole.
struct Upstream {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
    body: Bytes,
}

impl Upstream {
    fn response(self) -> Response {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        if let Some(v) = self.content_type {
            h.insert(header::CONTENT_TYPE, v);
        }
        if let Some(v) = self.retry_after {
            h.insert(header::RETRY_AFTER, v);
        }
        r
    }
}

async fn forward(p: &Proxy, parts: &axum::http::request::Parts, body: Bytes) -> Result<Upstream, reqwest::Error> {
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = p.client.request(method, format!("{}{path}", p.cfg.upstream)).body(body);
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
            req = req.header(name.as_str(), v);
        }
    }
    let resp = req.send().await?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let value = |name: &str| resp.headers().get(name).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let (content_type, retry_after) = (value("content-type"), value("retry-after"));
    let body = resp.bytes().await?;
    Ok(Upstream { status, content_type, retry_after, body })
}

/// The upstream's answer, spoilt the way `kind` says.
fn spoil(p: &Arc<Proxy>, kind: ProxyFault, up: Upstream, conn: ConnHandle) -> Response {
    let content_type = up.content_type.clone().unwrap_or(HeaderValue::from_static("application/json"));
    let len = up.body.len();
    let (body, length) = match kind {
        ProxyFault::Truncated => return truncated(up.body.to_vec(), "application/json"),
        ProxyFault::ResetMidBody => {
            let head = up.body.slice(..len / 2);
            let chunks = futures_util::stream::unfold(Some(head), move |head| {
                let conn = conn.clone();
                async move {
                    match head {
                        Some(bytes) => Some((Ok::<_, std::io::Error>(bytes), None)),
                        None => {
                            // Let the half that was sent reach the peer, then reset.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            conn.reset();
                            std::future::pending().await
                        }
                    }
                }
            });
            (Body::from_stream(chunks), len)
        }
        ProxyFault::LongLength => {
            let held = Arc::new(Held::new(p));
            let chunks = futures_util::stream::unfold(Some(up.body), move |body| {
                let held = held.clone();
                async move {
                    match body {
                        Some(bytes) => Some((Ok::<_, std::io::Error>(bytes), None)),
                        None => {
                            held.proxy.hold(held.proxy.cfg.stall_for).await;
                            Some((Err(std::io::Error::other("injected short body")), None))
                        }
                    }
                }
            });
            (Body::from_stream(chunks), len + 64)
        }
        ProxyFault::Drip => {
            let every = p.cfg.drip_every;
            let held = Arc::new(Held::new(p));
            let chunks = futures_util::stream::unfold((up.body, 0usize), move |(body, at)| {
                let held = held.clone();
                async move {
                    if at >= body.len() {
                        drop(held);
                        return None;
                    }
                    if at > 0 {
                        tokio::time::sleep(every).await;
                    }
                    Some((Ok::<_, std::io::Error>(body.slice(at..at + 1)), (body, at + 1)))
                }
            });
            (Body::from_stream(chunks), len)
        }
        _ => return up.response(),
    };
    let mut r = Response::new(body);
    *r.status_mut() = up.status;
    r.headers_mut().insert(header::CONTENT_TYPE, content_type);
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    r
}

/// A 200 answer of `bytes` bytes: a chat completion whose content is all `x`, sent in 1 MiB chunks.
fn huge(bytes: u64) -> Response {
    const HEAD: &[u8] =
        br#"{"id":"huge","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":""#;
    const TAIL: &[u8] = br#""},"finish_reason":"stop"}]}"#;
    let fill = bytes.saturating_sub((HEAD.len() + TAIL.len()) as u64);
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    let chunks = futures_util::stream::unfold((0u8, fill), move |(part, left)| {
        let chunk = chunk.clone();
        async move {
            match part {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(HEAD)), (1, left))),
                1 if left > 0 => {
                    let n = left.min(chunk.len() as u64);
                    Some((Ok(chunk.slice(..n as usize)), (1, left - n)))
                }
                1 => Some((Ok(Bytes::from_static(TAIL)), (2, 0))),
                _ => None,
            }
        }
    });
    // Chunked, without a Content-Length: the client learns the size only by reading, as from a server that
    // streams a runaway answer.
    let mut r = Response::new(Body::from_stream(chunks));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error answer with an OpenAI-style body.
fn status(code: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": "injected_fault", "code": code.as_u16()}});
    (code, Json(body)).into_response()
}
