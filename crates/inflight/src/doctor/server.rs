//! What the server says about itself over HTTP, plus what its process shows when it runs on this host.
//!
//! Each server exposes different parts: llama-server `/props`, `/slots` and (with `--metrics`) `/metrics`;
//! Ollama `/api/ps`; vLLM `/metrics`. Settings none of them report (llama-server's `-t`, Ollama's environment)
//! come from the process (see [`super::process`]), labelled as such, or stay unknown.

use std::time::{SystemTime, UNIX_EPOCH};

use super::formats::rfc3339_secs;
use super::process::{self, ProcessFacts};
use crate::backend::{metric, ApiKey, Getter};
use crate::backend::{Connection, ServerKind};
use serde::{Serialize, Serializer};

/// A value and where it was learnt ("/props total_slots", "command line -t of PID 42").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Known<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: String,
}

impl<T> Known<T> {
    /// A value from `source`.
    pub fn new(value: T, source: impl Into<String>) -> Known<T> {
        Known { value, source: source.into() }
    }
}

/// The server's facts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFacts {
    /// Base URL.
    pub url: String,
    /// Which server software.
    #[serde(serialize_with = "kind_name")]
    pub kind: ServerKind,
    /// What it calls itself, with its version when it gives one.
    pub description: String,
    /// Models it lists.
    pub models: Vec<String>,
    /// Requests it runs at once, as configured (slots, `OLLAMA_NUM_PARALLEL`, `--max-num-seqs`).
    pub lanes: Option<Known<u64>>,
    /// Context tokens one request can use.
    pub context_per_lane: Option<Known<u64>>,
    /// Generation threads.
    pub threads: Option<Known<u64>>,
    /// Prompt-processing threads, when set apart from `threads`.
    pub batch_threads: Option<Known<u64>>,
    /// Models kept loaded at once (`OLLAMA_MAX_LOADED_MODELS`, router `--models-max`).
    pub max_loaded_models: Option<Known<u64>>,
    /// Models loaded now (Ollama `/api/ps`).
    pub loaded: Vec<LoadedModel>,
    /// Requests running and waiting at the moment doctor looked (`/metrics`).
    pub busy: Option<Busy>,
    /// The server's process, when it listens on this host and is readable.
    pub process: Option<ProcessFacts>,
}

/// A loaded model (Ollama `/api/ps`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadedModel {
    /// Its name.
    pub name: String,
    /// Seconds until it unloads, from `expires_at`.
    pub expires_in_s: Option<f64>,
    /// Its context length, when listed.
    pub context_length: Option<u64>,
}

/// Requests in the server at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Busy {
    /// Being processed.
    pub running: f64,
    /// Queued (llama-server "deferred", vLLM "waiting").
    pub waiting: f64,
}

fn kind_name<S: Serializer>(kind: &ServerKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match kind {
        ServerKind::Ollama => "ollama",
        ServerKind::LlamaServer { .. } => "llama-server",
        ServerKind::Vllm => "vllm",
        ServerKind::LmStudio => "lm-studio",
        ServerKind::Unknown => "unknown",
        ServerKind::Engine { .. } => "engine",
    })
}

/// Asks the server (and its process, when local) everything doctor uses.
pub async fn gather(conn: &Connection, api_key: Option<&ApiKey>) -> ServerFacts {
    let url = conn.backend.url().to_owned();
    let get = Getter::new(&url, api_key, std::time::Duration::from_secs(5));
    let mut f = ServerFacts {
        url: url.clone(),
        kind: conn.info.kind,
        description: conn.info.description.clone(),
        models: conn.info.models.clone(),
        ..Default::default()
    };
    // Whatever holds the port must look like the server, or its command line would be "fixed" in its stead.
    f.process = local_port(&url).and_then(process::find_listener).filter(|p| runs(conn.info.kind, p));
    match conn.info.kind {
        ServerKind::LlamaServer { slots } => {
            f.lanes = slots.map(|n| Known::new(n, "/props total_slots"));
            if let Some(props) = get.json("/props").await {
                if let Some(build) = props["build_info"].as_str() {
                    f.description = format!("{} (build {build})", f.description);
                }
            }
            if let Some(slots) = get.json("/slots").await {
                f.context_per_lane = slots[0]["n_ctx"].as_u64().map(|n| Known::new(n, "/slots n_ctx"));
            }
            f.busy = get.text("/metrics").await.and_then(|m| {
                Some(Busy {
                    running: metric(&m, "llamacpp:requests_processing")?,
                    waiting: metric(&m, "llamacpp:requests_deferred")?,
                })
            });
        }
        ServerKind::Vllm => {
            f.busy = get.text("/metrics").await.and_then(|m| {
                Some(Busy {
                    running: metric(&m, "vllm:num_requests_running")?,
                    waiting: metric(&m, "vllm:num_requests_waiting")?,
                })
            });
        }
        ServerKind::Ollama => f.loaded = loaded_models(&get).await,
        ServerKind::LmStudio | ServerKind::Unknown | ServerKind::Engine { .. } => {}
    }
    if let Some(p) = f.process.clone() {
        settings_from_process(&mut f, &p);
    }
    f
}

/// Whether process `p` is the program of a `kind` server (a renamed binary is not recognised, and then its
/// settings stay unknown rather than read from the wrong process).
pub fn runs(kind: ServerKind, p: &ProcessFacts) -> bool {
    let words = p.command.iter().take(3).map(|w| w.rsplit('/').next().unwrap_or(w).to_lowercase());
    let names: &[&str] = match kind {
        ServerKind::LlamaServer { .. } => &["llama-server", "llama-cpp"],
        ServerKind::Ollama => &["ollama"],
        ServerKind::Vllm => &["vllm"],
        ServerKind::LmStudio => &["lm-studio", "lmstudio", "lm studio"],
        ServerKind::Unknown | ServerKind::Engine { .. } => &[],
    };
    words.into_iter().any(|w| names.iter().any(|n| w.contains(n)))
}

/// Reads the settings a server's command line or environment holds, without overriding what the API said.
pub fn settings_from_process(f: &mut ServerFacts, p: &ProcessFacts) {
    let pid = p.pid;
    let number = |flags: &[&str], env: &str| -> Option<Known<u64>> {
        if let Some(v) = p.flag(flags).and_then(|v| v.parse().ok()) {
            return Some(Known::new(v, format!("inferred from the command line of PID {pid}: {} {v}", flags[0])));
        }
        let v = p.env(env)?.parse().ok()?;
        Some(Known::new(v, format!("inferred from the environment of PID {pid}: {env}={v}")))
    };
    match f.kind {
        ServerKind::LlamaServer { .. } => {
            f.threads = number(&["-t", "--threads"], "LLAMA_ARG_THREADS");
            f.batch_threads = number(&["-tb", "--threads-batch"], "LLAMA_ARG_THREADS_BATCH");
            f.max_loaded_models = number(&["--models-max"], "LLAMA_ARG_MODELS_MAX");
        }
        ServerKind::Ollama => {
            f.lanes = f.lanes.take().or_else(|| number(&[], "OLLAMA_NUM_PARALLEL"));
            f.max_loaded_models = number(&[], "OLLAMA_MAX_LOADED_MODELS");
            f.context_per_lane = number(&[], "OLLAMA_CONTEXT_LENGTH");
        }
        ServerKind::Vllm => f.lanes = number(&["--max-num-seqs"], "VLLM_MAX_NUM_SEQS"),
        ServerKind::LmStudio | ServerKind::Unknown | ServerKind::Engine { .. } => {}
    }
}

async fn loaded_models(get: &Getter) -> Vec<LoadedModel> {
    let Some(ps) = get.json("/api/ps").await else { return Vec::new() };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    ps["models"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| LoadedModel {
                    name: m["name"].as_str().unwrap_or("?").to_owned(),
                    expires_in_s: m["expires_at"].as_str().and_then(rfc3339_secs).map(|at| at - now),
                    context_length: m["context_length"].as_u64(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The port of a URL whose host is this machine (doctor can only read local processes).
pub fn local_port(url: &str) -> Option<u16> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']');
    let local =
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    local.then(|| u.port_or_known_default()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_servers_are_local() {
        assert_eq!(local_port("http://127.0.0.1:8080"), Some(8080));
        assert_eq!(local_port("http://localhost:11434"), Some(11434));
        assert_eq!(local_port("http://[::1]:8000"), Some(8000));
        assert_eq!(local_port("http://10.0.0.5:8080"), None);
    }

    #[test]
    fn only_the_servers_own_program_is_read() {
        let p = |cmd: &[&str]| ProcessFacts {
            pid: 1,
            command: cmd.iter().map(|c| c.to_string()).collect(),
            environment: None,
        };
        let llama = ServerKind::LlamaServer { slots: None };
        assert!(runs(llama, &p(&["/opt/llama.cpp/build/bin/llama-server", "-m", "x"])));
        assert!(!runs(llama, &p(&["/target/debug/deps/tests-1234", "--include-ignored"])));
        assert!(runs(ServerKind::Vllm, &p(&["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server"])));
        assert!(runs(ServerKind::Ollama, &p(&["/usr/local/bin/ollama", "serve"])));
    }

    #[test]
    fn process_settings_name_their_source() {
        let mut f = ServerFacts { kind: ServerKind::LlamaServer { slots: Some(4) }, ..Default::default() };
        let p = ProcessFacts {
            pid: 7,
            command: ["llama-server", "-t", "4", "-np", "4"].map(String::from).to_vec(),
            environment: None,
        };
        settings_from_process(&mut f, &p);
        let threads = f.threads.expect("threads from -t");
        assert_eq!(threads.value, 4);
        assert_eq!(threads.source, "inferred from the command line of PID 7: -t 4");
        assert_eq!(f.batch_threads, None);
    }
}
