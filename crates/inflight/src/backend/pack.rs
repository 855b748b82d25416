//! Packed embeddings: a [`Backend`] around another that sends the one-input embedding requests arriving together
//! as one request of several inputs (OpenAI `input: [...]`, Ollama `/api/embed` with a list) and hands each
//! caller its own one-input answer.
//!
//! It is a backend layer, not a change to the dispatcher: each line stays one job with its own attempt path
//! (permit, attempts in the store, retries, outage rule, failure record), its own output line and its own cache
//! entry; only the wire carries several. The concurrency controller's level then counts inputs in flight, and
//! how many go in one request follows from it ([`super::gather`]): the packer keeps two requests of a kind out
//! and gathers the rest into the next, so the controller's climb over inputs in flight is a climb over inputs per
//! request as well, judged by the one rule of "best".
//!
//! Failures: a packed request refused for something one input can cause (a 4xx but 408/429, a 500 such as
//! llama-server's "input is too large to process") is split in two and each half sent again, down to single
//! inputs sent as their own lines' requests, so one bad input fails only its own line; a 413 also lowers the
//! most inputs a request may carry for the rest of the run. Failures that say nothing about the inputs (the
//! server unreachable, busy, timing out) reach every caller as they are, and each caller's attempt path retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::gather::{Flush, Gather};
use super::{Answer, Api, Backend, BackendError, ServerInfo, Streamed};
use crate::job::Endpoint;

/// `--inputs-per-request`: how many embedding inputs one request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputsPerRequest {
    /// As many as gather while two requests are out, up to [`AUTO_MAX_INPUTS`].
    Auto,
    /// At most this many (1: no packing).
    Fixed(usize),
}

impl InputsPerRequest {
    /// The most inputs a request may carry.
    pub fn max(self) -> usize {
        match self {
            InputsPerRequest::Auto => AUTO_MAX_INPUTS,
            InputsPerRequest::Fixed(n) => n.max(1),
        }
    }
}

/// The most inputs `auto` puts in one request: past a few hundred, a request's fixed cost is noise beside its
/// inputs' on any server, and one failure would send many inputs again.
pub const AUTO_MAX_INPUTS: usize = 256;
/// The most input text one packed request carries: under the 1 MiB request bodies a proxy commonly accepts
/// (nginx's `client_max_body_size`), and far above what helps.
pub const MAX_PACK_BYTES: usize = 512 * 1024;

/// What the packer did in a run, for the summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PackReport {
    /// `auto`, or `fixed` for `--inputs-per-request N`.
    pub mode: &'static str,
    /// The most inputs a request could carry at the end (`N`, or auto's bound, lowered by a server's 413).
    pub max: usize,
    /// Embedding requests sent (packed or not), splits' halves included.
    pub requests: u64,
    /// Inputs they carried.
    pub inputs: u64,
    /// The most inputs one request carried.
    pub largest: usize,
    /// Inputs per request over the last requests of the run (the last 200): what the run settled on.
    pub recent_mean: f64,
    /// Packed requests split in two after a refusal (each half sent again).
    pub splits: u64,
    /// The most inputs the server accepts in one request, when it refused more with 413.
    pub server_cap: Option<usize>,
}

impl PackReport {
    /// Inputs per request over the whole run.
    pub fn mean(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.inputs as f64 / self.requests as f64
        }
    }
}

/// Requests the recent mean is taken over.
const RECENT: usize = 200;

#[derive(Debug, Default)]
struct Status {
    report: PackReport,
    recent: std::collections::VecDeque<usize>,
}

impl Status {
    fn sent(&mut self, inputs: usize) {
        let r = &mut self.report;
        r.requests += 1;
        r.inputs += inputs as u64;
        r.largest = r.largest.max(inputs);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(inputs);
    }
}

/// A caller waiting for its input's answer.
struct Item {
    input: String,
    body: String,
    reply: oneshot::Sender<Result<Answer, BackendError>>,
}

enum Cmd {
    Add { key: String, item: Item },
    Done { key: String },
    Cap(usize),
}

/// The packing layer around `inner` (see the module docs).
pub struct PackingBackend {
    inner: Arc<dyn Backend>,
    max: usize,
    tx: mpsc::UnboundedSender<Cmd>,
    status: Arc<Mutex<Status>>,
}

impl PackingBackend {
    /// Packs `inner`'s embedding requests up to `per_request`; starts its task on the current runtime.
    pub fn new(inner: Arc<dyn Backend>, per_request: InputsPerRequest) -> PackingBackend {
        let max = per_request.max();
        let mode = if per_request == InputsPerRequest::Auto { "auto" } else { "fixed" };
        let status = Arc::new(Mutex::new(Status {
            report: PackReport { mode, max, ..Default::default() },
            ..Default::default()
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let owner = Owner { inner: inner.clone(), status: status.clone(), done: tx.downgrade() };
        tokio::spawn(owner.run(rx, Gather::new(max, MAX_PACK_BYTES)));
        PackingBackend { inner, max, tx, status }
    }
}

/// The packer's one owner task: holds the gathering state and starts the sends.
struct Owner {
    inner: Arc<dyn Backend>,
    status: Arc<Mutex<Status>>,
    done: mpsc::WeakUnboundedSender<Cmd>,
}

impl Owner {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Cmd>, mut gather: Gather) {
        let epoch = Instant::now();
        let mut items: HashMap<u64, Item> = HashMap::new();
        let mut next_id = 0u64;
        loop {
            let wake = gather.next_wake().map(|at| tokio::time::Instant::from_std(epoch + at));
            let cmd = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => break,
                },
                _ = sleep_until(wake) => None,
            };
            let now = epoch.elapsed();
            let flushes = match cmd {
                Some(Cmd::Add { key, item }) => {
                    let (id, bytes) = (next_id, item.input.len());
                    next_id += 1;
                    items.insert(id, item);
                    gather.add(now, &key, id, bytes)
                }
                Some(Cmd::Done { key }) => gather.done(now, &key),
                Some(Cmd::Cap(n)) => {
                    gather.cap(n);
                    let mut st = self.status.lock().expect("pack status lock");
                    st.report.max = gather.max();
                    st.report.server_cap = Some(st.report.server_cap.map_or(n, |c| c.min(n)));
                    Vec::new()
                }
                None => Vec::new(),
            };
            for flush in flushes.into_iter().chain(gather.due(now)) {
                self.start(flush, &mut items);
            }
        }
    }

    /// Sends a flushed group in a task of its own, then tells the owner it is back.
    fn start(&self, flush: Flush, items: &mut HashMap<u64, Item>) {
        let group: Vec<Item> = flush.ids.iter().filter_map(|id| items.remove(id)).collect();
        let (inner, status, done) = (self.inner.clone(), self.status.clone(), self.done.clone());
        tokio::spawn(async move {
            let base = serde_json::from_str::<Map<String, Value>>(&flush.key).unwrap_or_default();
            deliver(inner, Arc::new(base), group, status, done.clone()).await;
            if let Some(tx) = done.upgrade() {
                let _ = tx.send(Cmd::Done { key: flush.key });
            }
        });
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends `items` (one request, or halves of it after a refusal) and answers each caller.
fn deliver(
    inner: Arc<dyn Backend>,
    base: Arc<Map<String, Value>>,
    mut items: Vec<Item>,
    status: Arc<Mutex<Status>>,
    done: mpsc::WeakUnboundedSender<Cmd>,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        status.lock().expect("pack status lock").sent(items.len());
        if items.len() == 1 {
            let item = items.pop().expect("one item");
            let _ = item.reply.send(inner.send(Endpoint::Embedding, &item.body).await);
            return;
        }
        let inputs: Vec<&str> = items.iter().map(|i| i.input.as_str()).collect();
        let result = inner.send(Endpoint::Embedding, &packed_body(&base, &inputs)).await;
        let error = match result.and_then(|answer| split_answer(&answer, &inputs)) {
            Ok(answers) => {
                for (item, answer) in items.into_iter().zip(answers) {
                    let _ = item.reply.send(Ok(answer));
                }
                return;
            }
            Err(e) => e,
        };
        if !splits_on(&error) {
            for item in items {
                let _ = item.reply.send(Err(error.clone()));
            }
            return;
        }
        let n = items.len();
        if error.status() == Some(413) {
            if let Some(tx) = done.upgrade() {
                let _ = tx.send(Cmd::Cap(n / 2));
            }
        }
        status.lock().expect("pack status lock").report.splits += 1;
        tracing::debug!("a request of {n} inputs was refused ({error}): sending its halves");
        let back = items.split_off(n / 2);
        let first = deliver(inner.clone(), base.clone(), items, status.clone(), done.clone());
        let second = deliver(inner, base, back, status, done);
        futures_util::future::join(first, second).await;
    })
}

/// Whether a packed request's failure may be one input's fault, so its halves are worth sending apart: a refusal
/// (4xx but 408 and 429) or a server error (500: llama-server answers an input too large for its batch so), but
/// not the server away, busy or slow, which says nothing about the inputs.
fn splits_on(e: &BackendError) -> bool {
    match e {
        BackendError::Status { status, .. } => !matches!(status, 408 | 429 | 502 | 503 | 504),
        BackendError::Refused { .. } => true,
        _ => false,
    }
}

/// The group key of a one-input embedding body: the body without `input`, canonical (fields sorted), and the
/// input; `None` when the body is not one string input (a list is sent as written).
pub fn pack_key(body: &str) -> Option<(String, String)> {
    let v: Map<String, Value> = serde_json::from_str(body).ok()?;
    let input = v.get("input")?.as_str()?.to_owned();
    let mut rest: Vec<(&String, &Value)> = v.iter().filter(|(k, _)| k.as_str() != "input").collect();
    rest.sort_by(|a, b| a.0.cmp(b.0));
    let base: Map<String, Value> = rest.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Some((serde_json::to_string(&base).ok()?, input))
}

/// The request body carrying `inputs` with the group's other fields.
fn packed_body(base: &Map<String, Value>, inputs: &[&str]) -> String {
    let mut body = base.clone();
    body.insert("input".into(), Value::Array(inputs.iter().map(|s| Value::String((*s).to_owned())).collect()));
    Value::Object(body).to_string()
}

/// Splits a packed answer into one one-input answer per input, in order: each has its own vector (at `index`
/// 0), the answer's other fields, and a share of its prompt tokens in proportion to its input's length in bytes
/// (servers report only the total), the shares adding up to the total. `Err` (malformed) when the answer does
/// not hold one vector per input.
pub fn split_answer(answer: &Answer, inputs: &[&str]) -> Result<Vec<Answer>, BackendError> {
    let body: Value =
        serde_json::from_str(&answer.body).map_err(|e| BackendError::malformed_by(format!("packed answer: {e}"), e))?;
    let data = body["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut by_index: Vec<Option<&Value>> = vec![None; inputs.len()];
    for (pos, item) in data.iter().enumerate() {
        let at = item["index"].as_u64().map_or(pos, |i| i as usize);
        if let Some(slot) = by_index.get_mut(at) {
            *slot = Some(item);
        }
    }
    if data.len() != inputs.len() || by_index.iter().any(Option::is_none) {
        return Err(BackendError::malformed(format!(
            "a packed answer with {} vectors for {} inputs",
            data.len(),
            inputs.len()
        )));
    }
    let total = body["usage"]["prompt_tokens"].as_i64().or(answer.prompt_tokens);
    let shares = total.map(|t| shares(t, inputs));
    let mut out = Vec::with_capacity(inputs.len());
    for (i, item) in by_index.into_iter().enumerate() {
        let mut one = body.clone();
        let mut item = item.cloned().unwrap_or_default();
        item["index"] = 0.into();
        one["data"] = Value::Array(vec![item]);
        let share = shares.as_ref().map(|s| s[i]);
        if let Some(tokens) = share {
            one["usage"] = serde_json::json!({"prompt_tokens": tokens, "total_tokens": tokens});
        }
        one["x_inflight"] = serde_json::json!({"packed_inputs": inputs.len()});
        out.push(Answer { body: one.to_string(), prompt_tokens: share, ..answer.clone() });
    }
    Ok(out)
}

/// `total` split over `inputs` in proportion to their lengths in bytes (equally when all are empty), rounded
/// by largest remainder so the shares add up to `total`.
fn shares(total: i64, inputs: &[&str]) -> Vec<i64> {
    let total = total.max(0);
    let weights: Vec<f64> = if inputs.iter().all(|s| s.is_empty()) {
        vec![1.0; inputs.len()]
    } else {
        inputs.iter().map(|s| s.len() as f64).collect()
    };
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut out: Vec<i64> = exact.iter().map(|x| x.floor() as i64).collect();
    let mut left = total - out.iter().sum::<i64>();
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for i in order.into_iter().cycle().take(inputs.len() * 2) {
        if left <= 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

#[async_trait]
impl Backend for PackingBackend {
    async fn send(&self, endpoint: Endpoint, body: &str) -> Result<Answer, BackendError> {
        let packable = if endpoint == Endpoint::Embedding && self.max > 1 { pack_key(body) } else { None };
        let Some((key, input)) = packable else {
            return self.inner.send(endpoint, body).await;
        };
        let (reply, answer) = oneshot::channel();
        let item = Item { input, body: body.to_owned(), reply };
        if self.tx.send(Cmd::Add { key, item }).is_err() {
            return self.inner.send(endpoint, body).await;
        }
        match answer.await {
            Ok(result) => result,
            // The packer's task is gone (the runtime is shutting down): send it alone.
            Err(_) => self.inner.send(endpoint, body).await,
        }
    }

    async fn stream(&self, endpoint: Endpoint, body: &str) -> Result<Streamed, BackendError> {
        self.inner.stream(endpoint, body).await
    }

    async fn metrics(&self) -> Option<String> {
        self.inner.metrics().await
    }

    async fn probe(&self) -> Result<ServerInfo, BackendError> {
        self.inner.probe().await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }

    fn api(&self) -> Api {
        self.inner.api()
    }

    fn url(&self) -> &str {
        self.inner.url()
    }

    fn packing(&self) -> Option<PackReport> {
        let st = self.status.lock().expect("pack status lock");
        let recent = &st.recent;
        let recent_mean =
            if recent.is_empty() { 0.0 } else { recent.iter().sum::<usize>() as f64 / recent.len() as f64 };
        Some(PackReport { recent_mean, ..st.report.clone() })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answer(body: Value) -> Answer {
        Answer {
            status_code: 200,
            request_id: Some("r1".into()),
            body: body.to_string(),
            prompt_tokens: body["usage"]["prompt_tokens"].as_i64(),
            completion_tokens: None,
            cached_tokens: None,
            finish_reason: None,
            first_byte: None,
            load: None,
        }
    }

    #[test]
    fn one_string_input_is_packable_and_the_key_ignores_field_order_and_the_input() {
        let (k1, input) = pack_key(r#"{"model":"m","input":"a b","dimensions":8}"#).unwrap();
        let (k2, _) = pack_key(r#"{"dimensions":8,"input":"other","model":"m"}"#).unwrap();
        assert_eq!((k1.as_str(), input.as_str()), (k2.as_str(), "a b"));
        assert_ne!(k1, pack_key(r#"{"model":"n","input":"a b"}"#).unwrap().0, "another model is another group");
        assert!(pack_key(r#"{"model":"m","input":["a","b"]}"#).is_none(), "a list is sent as written");
        assert!(pack_key("not json").is_none());
    }

    #[test]
    fn a_packed_answer_splits_into_one_input_answers_in_input_order() {
        // Answers may list vectors in any order; `index` says whose each is.
        let body = serde_json::json!({"object": "list", "model": "m",
            "data": [{"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
                     {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}],
            "usage": {"prompt_tokens": 10, "total_tokens": 10}});
        let parts = split_answer(&answer(body), &["abcd", "abcdefghijklmnop"]).unwrap();
        let bodies: Vec<Value> = parts.iter().map(|a| serde_json::from_str(&a.body).unwrap()).collect();
        assert_eq!(
            bodies[0]["data"],
            serde_json::json!([{"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}])
        );
        assert_eq!(bodies[1]["data"][0]["embedding"], serde_json::json!([0.0, 1.0]));
        assert_eq!(bodies[1]["data"][0]["index"], 0);
        assert_eq!((parts[0].prompt_tokens, parts[1].prompt_tokens), (Some(2), Some(8)), "shares by length");
        assert_eq!(bodies[0]["usage"], serde_json::json!({"prompt_tokens": 2, "total_tokens": 2}));
        assert_eq!(bodies[0]["model"], "m");
        assert_eq!(bodies[0]["x_inflight"]["packed_inputs"], 2);
        assert_eq!(parts[1].request_id.as_deref(), Some("r1"));
    }

    #[test]
    fn an_answer_without_a_vector_per_input_is_malformed() {
        let body = serde_json::json!({"data": [{"index": 0, "embedding": [1.0]}]});
        let e = split_answer(&answer(body), &["a", "b"]).unwrap_err();
        assert!(matches!(e, BackendError::Malformed { .. }) && e.is_retryable(), "{e}");
        let twice = serde_json::json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]});
        assert!(split_answer(&answer(twice), &["a", "b"]).is_err(), "two vectors for one input, none for the other");
    }

    #[test]
    fn shares_add_up_to_the_total() {
        assert_eq!(shares(10, &["aa", "aa", "aa"]), vec![4, 3, 3]);
        assert_eq!(shares(7, &["", ""]).iter().sum::<i64>(), 7);
        assert_eq!(shares(0, &["abc"]), vec![0]);
        let texts = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "g"];
        for total in [0, 1, 5, 29, 1000] {
            assert_eq!(shares(total, &texts).iter().sum::<i64>(), total, "{total}");
        }
    }

    #[test]
    fn only_failures_one_input_can_cause_split_a_request() {
        let status = |s| BackendError::Status { status: s, message: String::new(), body: None, retry_after: None };
        for s in [400, 413, 422, 500] {
            assert!(splits_on(&status(s)), "{s}");
        }
        for s in [408, 429, 502, 503, 504] {
            assert!(!splits_on(&status(s)), "{s}");
        }
        assert!(!splits_on(&BackendError::reset("gone")));
        assert!(!splits_on(&BackendError::Timeout(Duration::from_secs(1))));
        assert!(!splits_on(&BackendError::malformed("cut short")));
    }
}
