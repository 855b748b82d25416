//! State shared by the handlers of both APIs and the request pipeline they
//! have in common: counting, auth, faults, and starting a generation either
//! on the performance model or instantly (zero-latency mode).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use rand::SeedableRng;
use serde_json::json;

use crate::config::{Api, SimConfig};
use crate::engine::{EngineParams, Event, Finished, Job};
use crate::faults::{truncated, Fault, FaultPlan};
use crate::runtime::{Runtime, Ticket};
use crate::scheduler::{Busy, KeepAlive, RunnerOpts, Scheduler};
use crate::server::ConnHandle;
use crate::stats::{Counters, SimStats};
use crate::wire::{completion_text, estimate_tokens, hash, mix};

/// Tokens of the fixed zero-latency completion.
const ZERO_LATENCY_TOKENS: u32 = 8;

/// Ollama's default bound on pending requests.
const OLLAMA_MAX_QUEUE: usize = 512;

/// Everything a handler needs.
#[derive(Debug)]
pub(crate) struct App {
    pub cfg: SimConfig,
    pub runtime: Option<Arc<Runtime>>,
    counters: Counters,
    faults: FaultPlan<Fault>,
    next_id: AtomicU64,
}

/// What a handler asks the model for.
#[derive(Debug)]
pub(crate) struct Spec {
    pub model: String,
    pub prompt_tokens: u32,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    /// Embeddings generate nothing: only the prompt is processed.
    pub embed: bool,
    /// The inputs of an embedding request (0 for generation).
    pub inputs: u32,
    pub opts: RunnerOpts,
    pub keep_alive: Option<KeepAlive>,
}

/// Marks one inference request in flight; dropping it ends the request.
#[derive(Debug)]
pub(crate) struct Flight(Arc<App>);

impl Flight {
    /// Records a successful answer of `tokens` generated tokens.
    pub fn succeed(&self, tokens: u32) {
        self.0.counters.ok.fetch_add(1, Relaxed);
        self.0.counters.completion_tokens.fetch_add(u64::from(tokens), Relaxed);
    }

    /// Records a successful embedding answer for `inputs` inputs.
    pub fn embedded(&self, inputs: usize) {
        self.succeed(0);
        self.0.counters.embed_inputs.fetch_add(inputs as u64, Relaxed);
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.counters.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A started generation.
#[derive(Debug)]
pub(crate) struct Run {
    pub id: u64,
    /// Whether `max_tokens` cut the output (finish reason "length").
    pub cut: bool,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Instant { tokens: u32, next: u32, stream: bool },
    Model(Ticket),
}

impl Run {
    /// The next token (streaming only) or the completion; `None` if the server is going away.
    pub async fn next(&mut self) -> Option<Event> {
        match &mut self.source {
            Source::Model(t) => t.next().await,
            Source::Instant { tokens, next, stream } => {
                if *stream && *next < *tokens {
                    *next += 1;
                    return Some(Event::Token { id: self.id, index: *next - 1 });
                }
                if *next > *tokens {
                    return None;
                }
                *next = *tokens + 1;
                Some(Event::Done(Finished {
                    id: self.id,
                    tokens: *tokens,
                    arrived: 0.0,
                    admitted: 0.0,
                    finished: 0.0,
                    load: 0.0,
                    prefill: 0.0,
                }))
            }
        }
    }

    /// Waits for the completion, skipping token events.
    pub async fn finish(&mut self) -> Option<Finished> {
        loop {
            match self.next().await? {
                Event::Done(f) => return Some(f),
                Event::Token { .. } => {}
            }
        }
    }
}

impl App {
    /// Builds the shared state; the runtime (absent in zero-latency mode) still needs driving.
    pub fn new(cfg: SimConfig) -> Arc<Self> {
        let runtime = (!cfg.zero_latency).then(|| {
            let params = EngineParams {
                lanes: cfg.lanes.max(1),
                base_step: cfg.base_step.as_secs_f64(),
                per_request_step: cfg.per_request_step.as_secs_f64(),
                knee: f64::from(cfg.knee.max(1)),
                prefill_per_token: cfg.prefill_per_token.as_secs_f64(),
                warmup_requests: u64::from(cfg.warmup_requests),
                warmup_factor: cfg.warmup_factor,
                drift_after: cfg.drift_after.map(|d| d.as_secs_f64()),
                drift_factor: cfg.drift_factor,
            };
            let lanes = params.lanes;
            let sched = match cfg.api {
                Api::OpenAi => Scheduler::single(params, cfg.max_queue.map(|q| lanes + q)),
                Api::Ollama => Scheduler::residency(
                    params,
                    cfg.load_time.as_secs_f64(),
                    cfg.max_loaded_models,
                    Some(lanes + cfg.max_queue.unwrap_or(OLLAMA_MAX_QUEUE)),
                ),
            };
            Runtime::new(sched, cfg.time_scale)
        });
        Arc::new(App {
            faults: cfg.faults.plan(cfg.seed),
            cfg,
            runtime,
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Counts a new inference request and marks it in flight.
    pub fn enter(self: &Arc<Self>) -> Flight {
        let c = &self.counters;
        c.requests.fetch_add(1, Relaxed);
        let now = c.in_flight.fetch_add(1, Relaxed) + 1;
        c.max_in_flight.fetch_max(now, Relaxed);
        Flight(self.clone())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        SimStats {
            requests: c.requests.load(Relaxed),
            ok: c.ok.load(Relaxed),
            error_500: c.error_500.load(Relaxed),
            error_503_retry_after: c.error_503.load(Relaxed),
            reset: c.reset.load(Relaxed),
            stall: c.stall.load(Relaxed),
            truncated: c.truncated.load(Relaxed),
            not_found: c.not_found.load(Relaxed),
            busy_503: c.busy_503.load(Relaxed),
            bad_request: c.bad_request.load(Relaxed),
            unauthorized: c.unauthorized.load(Relaxed),
            max_in_flight: c.max_in_flight.load(Relaxed),
            completion_tokens: c.completion_tokens.load(Relaxed),
            model_loads: self.runtime.as_ref().map_or(0, |rt| rt.loads()),
            invalid_json: c.invalid_json.load(Relaxed),
            embed_inputs: c.embed_inputs.load(Relaxed),
        }
    }

    /// The text of a whole answer of `tokens` tokens to the request `body`: plain words, or with
    /// [`SimConfig::with_json_answers`] a JSON object, cut short (invalid) for a seeded share of request bodies.
    pub fn answer_text(&self, body: &[u8], tokens: u32) -> String {
        let Some(invalid) = self.cfg.json_answers else { return completion_text(tokens) };
        let text = serde_json::json!({"answer": completion_text(tokens)}).to_string();
        let draw = (mix(mix(self.cfg.seed, 0x6a73_6f6e), hash(body)) >> 11) as f64 / (1u64 << 53) as f64;
        if draw >= invalid {
            return text;
        }
        self.counters.invalid_json.fetch_add(1, Relaxed);
        text[..text.len() - 2].to_owned()
    }

    /// An error in the configured API's shape.
    pub fn error(&self, status: StatusCode, message: &str, kind: &str) -> Response {
        let body = match self.cfg.api {
            Api::OpenAi => {
                json!({"error": {"message": message, "type": kind, "code": status.as_u16()}})
            }
            Api::Ollama => json!({ "error": message }),
        };
        (status, Json(body)).into_response()
    }

    /// A 400 for an unparsable body.
    pub fn bad_request(&self, message: &str) -> Response {
        self.counters.bad_request.fetch_add(1, Relaxed);
        self.error(StatusCode::BAD_REQUEST, message, "invalid_request_error")
    }

    /// A 404 with the API-specific message, counted.
    pub fn not_found(&self, message: &str) -> Response {
        self.counters.not_found.fetch_add(1, Relaxed);
        self.error(StatusCode::NOT_FOUND, message, "not_found_error")
    }

    /// Whether requests for `model` must fail as missing.
    pub fn is_missing(&self, model: &str, same: impl Fn(&str, &str) -> bool) -> bool {
        self.cfg.missing_models.iter().any(|m| same(m, model))
    }

    /// Injects this attempt's fault, if any. `success` renders the body a
    /// truncated response cuts short. Returns `None` when the request should
    /// be served (possibly after a stall).
    pub async fn fault(
        &self,
        body: &[u8],
        conn: &ConnHandle,
        success: impl FnOnce() -> (Vec<u8>, &'static str),
    ) -> Option<Response> {
        let c = &self.counters;
        match self.faults.draw(body)? {
            Fault::Error500 => {
                c.error_500.fetch_add(1, Relaxed);
                let msg = "simulated internal server error";
                Some(self.error(StatusCode::INTERNAL_SERVER_ERROR, msg, "server_error"))
            }
            Fault::Error503 => {
                c.error_503.fetch_add(1, Relaxed);
                let msg = "simulated overload, try again later";
                let mut r = self.error(StatusCode::SERVICE_UNAVAILABLE, msg, "unavailable_error");
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Some(r)
            }
            Fault::Reset => {
                c.reset.fetch_add(1, Relaxed);
                conn.reset();
                std::future::pending().await
            }
            Fault::Stall => {
                c.stall.fetch_add(1, Relaxed);
                tokio::time::sleep(self.cfg.stall_for).await;
                None
            }
            Fault::Truncated => {
                c.truncated.fetch_add(1, Relaxed);
                let (bytes, content_type) = success();
                Some(truncated(bytes, content_type))
            }
        }
    }

    /// The embedding request's refusal, if the configuration refuses it: more inputs than
    /// [`SimConfig::with_embed_max_inputs`] (413), or an input over [`SimConfig::with_embed_context`] (400, in
    /// llama-server's words). Either refuses the whole request, as those servers do.
    pub fn refuse_embedding(&self, inputs: &[String]) -> Option<Response> {
        if let Some(max) = self.cfg.embed_max_inputs.filter(|&m| inputs.len() > m) {
            self.counters.bad_request.fetch_add(1, Relaxed);
            let msg = format!("batch size {} > maximum allowed batch size {max}", inputs.len());
            return Some(self.error(StatusCode::PAYLOAD_TOO_LARGE, &msg, "validation"));
        }
        let context = self.cfg.embed_context?;
        let long = inputs.iter().map(|i| estimate_tokens(i)).find(|&t| t > context)?;
        self.counters.bad_request.fetch_add(1, Relaxed);
        let msg = format!("input ({long} tokens) is larger than the max context size ({context} tokens). skipping");
        Some(self.error(StatusCode::BAD_REQUEST, &msg, "exceed_context_size_error"))
    }

    /// A 503 for a full queue, in the API's shape (OpenAI adds `Retry-After`).
    pub fn busy(&self) -> Response {
        self.counters.busy_503.fetch_add(1, Relaxed);
        match self.cfg.api {
            Api::OpenAi => {
                let mut r = self.error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server busy: request queue is full",
                    "unavailable_error",
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
            Api::Ollama => self.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy, please try again.  maximum pending requests exceeded",
                "unavailable_error",
            ),
        }
    }

    /// Starts generating: draws the output length and hands the job to the model.
    pub fn start(&self, spec: Spec) -> Result<Run, Busy> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let Some(rt) = &self.runtime else {
            let limit = spec.max_tokens.unwrap_or(u32::MAX);
            let tokens = if spec.embed { 0 } else { ZERO_LATENCY_TOKENS.min(limit) };
            return Ok(Run {
                id,
                cut: !spec.embed && limit < ZERO_LATENCY_TOKENS,
                source: Source::Instant { tokens, next: 0, stream: spec.stream },
            });
        };
        let draw = if spec.embed {
            0
        } else {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(mix(self.cfg.seed, id));
            self.cfg.lengths.draw(&mut rng)
        };
        let output_tokens = spec.max_tokens.map_or(draw, |m| m.min(draw));
        // The embedding cost profile replaces the prompt's prefill with a fixed overhead plus a per-input cost.
        let (prompt_tokens, service) = match (spec.embed, self.cfg.embed_cost) {
            (true, Some((overhead, per_input))) => {
                (0, overhead.as_secs_f64() + per_input.as_secs_f64() * f64::from(spec.inputs))
            }
            _ => (spec.prompt_tokens, 0.0),
        };
        let req = crate::scheduler::Request {
            model: spec.model,
            opts: spec.opts,
            keep_alive: spec.keep_alive.unwrap_or(KeepAlive::For(self.cfg.keep_alive.as_secs_f64())),
            job: Job { id, prompt_tokens, output_tokens, stream: spec.stream, service },
        };
        let ticket = rt.submit(req)?;
        Ok(Run { id, cut: output_tokens < draw, source: Source::Model(ticket) })
    }
}

/// One piece of a streamed answer, for the API module to render.
pub(crate) enum Piece<'a> {
    Token(u32),
    Done(&'a Finished),
}

/// A streaming body rendering each event with `render`; it counts the
/// success when the completion arrives and ends the flight when it ends.
pub(crate) fn stream_body<F>(run: Run, flight: Flight, render: F) -> Body
where
    F: FnMut(Piece<'_>, bool) -> Vec<u8> + Send + 'static,
{
    let chunks = futures_util::stream::unfold(Some((run, flight, render)), |state| async move {
        let (mut run, flight, mut render) = state?;
        let cut = run.cut;
        let (bytes, rest) = match run.next().await? {
            Event::Token { index, .. } => {
                let bytes = render(Piece::Token(index), cut);
                (bytes, Some((run, flight, render)))
            }
            Event::Done(f) => {
                flight.succeed(f.tokens);
                (render(Piece::Done(&f), cut), None)
            }
        };
        Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), rest))
    });
    Body::from_stream(chunks)
}

/// Requires `Authorization: Bearer KEY` on everything but the health probes.
pub(crate) fn with_auth(router: Router, app: Arc<App>) -> Router {
    if app.cfg.api_key.is_none() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(app, auth))
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/" | "/health");
    let expected = app.cfg.api_key.as_deref().map(|k| format!("Bearer {k}"));
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if open || expected.as_deref() == given {
        return next.run(req).await;
    }
    app.counters.unauthorized.fetch_add(1, Relaxed);
    app.error(StatusCode::UNAUTHORIZED, "invalid api key", "authentication_error")
}
