//! `inflight doctor`: where the bottleneck is across the three layers (client concurrency, server lanes, CPU
//! threads against physical cores), and the line to paste that fixes it.
//!
//! Gathering and judging are kept apart. [`host`], [`server`] (with [`process`]), [`jobs`] and [`probe`]
//! collect [`Facts`]; [`verdict`] turns facts into verdicts with pure functions, so every rule is tested on
//! synthetic facts without a server; [`report`] prints them. The JSON form of [`DoctorReport`] is pinned by
//! `docs/schema/doctor-report.schema.json`.

mod formats;
pub mod host;
pub mod jobs;
pub mod probe;
pub mod process;
pub mod reload;
pub mod report;
pub mod server;
pub mod verdict;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::backend::{
    connect, Api, BusySampler, ConnectError, ConnectOptions, InputsPerRequest, OllamaBackend, ServerKind,
};
use crate::job::{Endpoint, JobFileError, Parser, RequestDefaults, TemplateFile};
pub use verdict::{Change, Verdict, VerdictKind};

/// Everything doctor learnt, the input of the rules.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    /// The machine.
    pub host: host::HostFacts,
    /// The server.
    pub server: server::ServerFacts,
    /// The live probe, unless skipped.
    pub probe: Option<probe::ProbeFacts>,
    /// The sampled `--jobs`.
    pub jobs: Option<jobs::JobsFacts>,
    /// The client concurrency the user said they use (`--concurrency`).
    pub client_concurrency: Option<usize>,
    /// Other inference servers on this host, whose threads share the cores when they are busy.
    pub other_servers: Vec<process::ProcessFacts>,
    /// Server-setting variables (`OLLAMA_*`, `LLAMA_ARG_*`, `VLLM_*`) of doctor's own environment.
    pub doctor_environment: Vec<(String, String)>,
}

/// The facts, and what they say to change.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// What was found.
    #[serde(flatten)]
    pub facts: Facts,
    /// What to change; empty when nothing needs changing.
    pub verdicts: Vec<Verdict>,
    /// Observations that need no change.
    pub notes: Vec<String>,
}

/// What to examine, and how long to probe.
#[derive(Debug, Clone)]
pub struct DoctorConfig {
    /// Server URL, or None for the usual local ports.
    pub server: Option<String>,
    /// API, or None to detect.
    pub api: Option<Api>,
    /// Bearer token.
    pub api_key: Option<crate::backend::ApiKey>,
    /// Model for the probe (default: the first the server lists).
    pub model: Option<String>,
    /// Jobs file to sample.
    pub jobs: Option<PathBuf>,
    /// Lines of `jobs` to sample.
    pub sample: usize,
    /// `--template` for the jobs' lines, loaded.
    pub template: Option<TemplateFile>,
    /// `--system`, for the jobs and the synthetic probe alike.
    pub system: Option<String>,
    /// `--max-line-bytes` for the jobs' lines.
    pub max_line_bytes: u64,
    /// Total probe time; zero skips the probe.
    pub probe_time: Duration,
    /// Output tokens per probe request.
    pub output_tokens: u64,
    /// The user's client concurrency.
    pub client_concurrency: Option<usize>,
}

/// Why doctor could not examine the server.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// No usable server.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The jobs file cannot be opened, or has no usable line.
    #[error(transparent)]
    Jobs(#[from] JobFileError),
    /// The jobs file failed mid-read (the message names it).
    #[error(transparent)]
    JobsRead(#[from] std::io::Error),
}

/// Gathers the facts (probing the server for up to `probe_time`) and judges them.
pub async fn examine(cfg: &DoctorConfig, mut progress: impl FnMut(String)) -> Result<DoctorReport, DoctorError> {
    let host = host::gather();
    let opts = ConnectOptions {
        api_key: cfg.api_key.clone(),
        request_timeout: Duration::from_secs(600),
        runner_options: OllamaBackend::runner_options_of(&[]),
        inputs_per_request: InputsPerRequest::Fixed(1),
    };
    let conn = connect(cfg.server.as_deref(), cfg.api, &opts).await?;
    progress(format!("doctor: {} at {}", conn.info.description, conn.backend.url()));
    let server = server::gather(&conn, cfg.api_key.as_ref()).await;
    let model = cfg.model.clone().or_else(|| conn.info.models.first().cloned());
    let defaults = RequestDefaults {
        model: model.clone(),
        max_tokens: Some(cfg.output_tokens),
        system: cfg.system.clone(),
        ..Default::default()
    };
    let (requests, jobs) = match &cfg.jobs {
        Some(path) => {
            let parser = Parser::new(defaults, cfg.template.as_ref().map(TemplateFile::parts));
            let (requests, facts) = jobs::sample(path, &parser, cfg.max_line_bytes, cfg.sample, &mut progress)?;
            (requests, Some(facts))
        }
        None => (synthetic(defaults), None),
    };
    let mut notes = Vec::new();
    let probe = if cfg.probe_time.is_zero() {
        None
    } else if conn.info.kind == ServerKind::Ollama && model.is_none() {
        notes.push("probe skipped: the server lists no model; pass --model".to_owned());
        None
    } else {
        let mut sweep_time = cfg.probe_time;
        let mut spaced = None;
        if let (ServerKind::Ollama, Some(model)) = (conn.info.kind, &model) {
            // A quarter of the probe goes to three requests two pauses apart, before the sweep's requests
            // (which carry inflight's own keep_alive) can keep the model loaded.
            let gap = cfg.probe_time / 8;
            progress(format!("probe: 3 requests {:.1}s apart, to see whether the model unloads", gap.as_secs_f64()));
            let get = crate::backend::Getter::new(conn.backend.url(), cfg.api_key.as_ref(), cfg.probe_time);
            spaced = reload::spaced(&get, model, 3, gap).await;
            sweep_time = cfg.probe_time * 3 / 4;
        }
        let url = conn.backend.url();
        let busy = BusySampler::new(conn.info.kind, url, cfg.api_key.as_ref(), probe::SAMPLE_EVERY);
        let mut p = probe::sweep(conn.backend.clone(), requests, sweep_time, busy, &mut progress).await;
        p.spaced = spaced;
        Some(p)
    };
    let doctor_environment = process::settings_of(std::env::vars().map(|(k, v)| format!("{k}={v}")));
    let other_servers = process::other_servers(server.process.as_ref().map(|p| p.pid));
    let facts = Facts {
        host,
        server,
        probe,
        jobs,
        client_concurrency: cfg.client_concurrency,
        other_servers,
        doctor_environment,
    };
    let verdicts = verdict::judge(&facts);
    notes.extend(verdict::notes(&facts));
    Ok(DoctorReport { facts, verdicts, notes })
}

/// Short chat requests of varied wording, so a prompt cache cannot answer them all from one entry.
fn synthetic(defaults: RequestDefaults) -> Vec<(Endpoint, String)> {
    let parser = Parser::new(defaults, None);
    (0..64)
        .filter_map(|i| {
            let line = serde_json::json!({"prompt": format!("Write one sentence about the number {i}.")}).to_string();
            parser.parse(1, line.as_bytes()).ok().flatten().map(|job| (job.endpoint, job.body))
        })
        .collect()
}
