//! Rules about what the requests need from the server: the model staying loaded, room for every model the
//! jobs use, enough context per request, and settings that actually exist.

use super::{command_fix, known_line, Change, Verdict, VerdictKind};
use crate::backend::ServerKind;
use crate::doctor::server::Known;
use crate::doctor::Facts;

/// A spaced request whose `load_duration` is at least this long loaded the model again (a loaded model
/// answers with a load of a few milliseconds).
pub const RELOAD_MS: f64 = 100.0;
/// Ollama's default for `OLLAMA_MAX_LOADED_MODELS` (3 per GPU, 3 on CPU).
const OLLAMA_MAX_LOADED_DEFAULT: u64 = 3;
/// Settings users set that no server reads, and what does what they meant.
const NONEXISTENT: &[(&str, &str)] = &[
    ("OLLAMA_NUM_THREAD", "threads are the per-model option num_thread: `PARAMETER num_thread N` in a Modelfile, or \"options\": {\"num_thread\": N}"),
    ("OLLAMA_NUM_THREADS", "threads are the per-model option num_thread: `PARAMETER num_thread N` in a Modelfile, or \"options\": {\"num_thread\": N}"),
    ("OLLAMA_NUM_CTX", "the context is OLLAMA_CONTEXT_LENGTH=8192 (or the num_ctx option)"),
    ("OLLAMA_PARALLEL", "lanes are OLLAMA_NUM_PARALLEL=4"),
    ("OLLAMA_MAX_MODELS", "loaded models are OLLAMA_MAX_LOADED_MODELS=2"),
];

/// Spaced requests that load the model again each time.
pub fn unloads(f: &Facts) -> Option<Verdict> {
    let spaced = f.probe.as_ref()?.spaced.as_ref()?;
    let later = spaced.requests.get(1..)?;
    let reloads: Vec<_> = later.iter().filter(|r| r.load_ms >= RELOAD_MS).collect();
    if reloads.is_empty() {
        return None;
    }
    let load = reloads.iter().map(|r| r.load_ms).sum::<f64>() / reloads.len() as f64;
    let total = reloads.iter().map(|r| r.total_ms).sum::<f64>() / reloads.len() as f64;
    let share = if total > 0.0 { 100.0 * load / total } else { 100.0 };
    let mut evidence = vec![format!(
        "{} of {} requests sent {:.1} s apart loaded the model again: load_duration {:.0} ms of {:.0} ms each \
         ({share:.0}% of the request)",
        reloads.len(),
        later.len(),
        spaced.gap_s,
        load,
        total
    )];
    let expiries: Vec<String> = spaced
        .requests
        .iter()
        .map(|r| r.expires_in_s.map_or("not loaded".into(), |s| format!("expires in {s:.1} s")))
        .collect();
    evidence.push(format!("/api/ps right after each answer: {}", expiries.join(", ")));
    if let Some(k) = f.server.process.as_ref().and_then(|p| p.env("OLLAMA_KEEP_ALIVE")) {
        evidence.push(format!("OLLAMA_KEEP_ALIVE={k} in the server's environment"));
    }
    Some(Verdict {
        kind: VerdictKind::ModelUnloads,
        finding: format!(
            "the model unloads between requests: each request after a pause pays {:.1} s to load it again",
            load / 1e3
        ),
        evidence,
        fix:
            "OLLAMA_KEEP_ALIVE=30m ollama serve   # or \"keep_alive\": \"30m\" in each request (inflight run sends it)"
                .into(),
        change: Change::new("OLLAMA_KEEP_ALIVE", "30m"),
    })
}

/// More models in the jobs than the server keeps loaded: every switch is a load.
pub fn models_compete(f: &Facts) -> Option<Verdict> {
    let jobs = f.jobs.as_ref()?;
    let limit = f.server.max_loaded_models.clone().or_else(|| {
        (f.server.kind == ServerKind::Ollama)
            .then(|| Known::new(OLLAMA_MAX_LOADED_DEFAULT, "Ollama's default OLLAMA_MAX_LOADED_MODELS"))
    })?;
    let wanted = jobs.models.len() as u64;
    if wanted < 2 || wanted <= limit.value {
        return None;
    }
    let (fix, setting) = match f.server.kind {
        ServerKind::Ollama => (
            format!("OLLAMA_MAX_LOADED_MODELS={wanted} ollama serve   # if memory holds {wanted} models"),
            "OLLAMA_MAX_LOADED_MODELS",
        ),
        _ => (
            command_fix(
                f,
                &[(&["--models-max"], &wanted.to_string())],
                format!("llama-server ... --models-max {wanted}"),
            ),
            "--models-max",
        ),
    };
    Some(Verdict {
        kind: VerdictKind::ModelsCompete,
        finding: format!(
            "the jobs use {wanted} models and the server keeps {} loaded: interleaved jobs swap models, paying a \
             load per switch",
            limit.value
        ),
        evidence: vec![
            format!("models in {} sampled jobs of {}: {}", jobs.sampled, jobs.path, jobs.models.join(", ")),
            known_line("models kept loaded", &limit),
        ],
        fix: format!("{fix}   # or run the jobs one model at a time"),
        change: Change::new(setting, wanted),
    })
}

/// The largest job's prompt and output budget over one request's context.
pub fn context(f: &Facts) -> Option<Verdict> {
    let jobs = f.jobs.as_ref()?;
    let smallest_loaded = f.server.loaded.iter().filter_map(|m| m.context_length).min();
    let per_lane = f
        .server
        .context_per_lane
        .clone()
        .or_else(|| smallest_loaded.map(|n| Known::new(n, "/api/ps context_length")))?;
    if jobs.context_needed_max <= per_lane.value {
        return None;
    }
    // Round up to a multiple of 1024 with room for the estimate's error.
    let need = (jobs.context_needed_max * 5 / 4).div_ceil(1024) * 1024;
    let lanes = f.server.lanes.as_ref().map_or(1, |k| k.value.max(1));
    let (fix, setting, value) = match f.server.kind {
        ServerKind::Ollama => (
            format!("OLLAMA_CONTEXT_LENGTH={need} ollama serve   # or inflight run --param num_ctx={need}"),
            "OLLAMA_CONTEXT_LENGTH",
            need,
        ),
        _ => (
            command_fix(
                f,
                &[(&["-c", "--ctx-size"], &(need * lanes).to_string())],
                format!("llama-server ... -c {}", need * lanes),
            ) + &format!("   # -c is shared by the {lanes} slot(s)"),
            "-c",
            need * lanes,
        ),
    };
    Some(Verdict {
        kind: VerdictKind::ContextTooSmall,
        finding: format!(
            "the largest job needs about {} tokens of context and a request gets {}: the server cuts or refuses it",
            jobs.context_needed_max, per_lane.value
        ),
        evidence: vec![
            format!(
                "{} sampled jobs: prompt median {} / largest {} tokens, output budget {} ({})",
                jobs.sampled,
                jobs.prompt_tokens_p50,
                jobs.prompt_tokens_max,
                jobs.output_tokens_max.map_or("not set on every job".into(), |n| n.to_string()),
                jobs.token_estimate
            ),
            known_line("context per request", &per_lane),
        ],
        fix,
        change: Change::new(setting, value),
    })
}

/// Variables set in doctor's environment or the server's that no server reads.
pub fn nonexistent(f: &Facts) -> Vec<Verdict> {
    let server_env = f.server.process.as_ref().and_then(|p| p.environment.as_ref().map(|e| (p.pid, e)));
    NONEXISTENT
        .iter()
        .filter_map(|(name, instead)| {
            let mut evidence = Vec::new();
            if let Some((_, v)) = f.doctor_environment.iter().find(|(k, _)| k == name) {
                evidence.push(format!("{name}={v} in this shell's environment"));
            }
            if let Some((pid, env)) = server_env {
                if let Some((_, v)) = env.iter().find(|(k, _)| k == name) {
                    evidence.push(format!("{name}={v} in the environment of the server (PID {pid})"));
                }
            }
            (!evidence.is_empty()).then(|| Verdict {
                kind: VerdictKind::NonexistentSetting,
                finding: format!("{name} does nothing: no server reads it"),
                evidence,
                fix: format!("unset {name}   # {instead}"),
                change: None,
            })
        })
        .collect()
}
