//! Whether a model unloads between requests (Ollama): a few short requests spaced apart, sent without a
//! `keep_alive` so the server's own default applies, each answer's `load_duration` and `/api/ps` after it.
//!
//! These go outside the backend because the backend always sends `keep_alive: 30m`, which would hide the
//! server's default.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;

use super::formats::rfc3339_secs;
use crate::backend::Getter;

/// Requests sent one at a time with a pause between them (Ollama).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpacedProbe {
    /// Pause between requests, seconds.
    pub gap_s: f64,
    /// Each request's figures.
    pub requests: Vec<SpacedRequest>,
}

/// One spaced request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpacedRequest {
    /// Ollama's `load_duration`, milliseconds.
    pub load_ms: f64,
    /// Ollama's `total_duration`, milliseconds.
    pub total_ms: f64,
    /// Seconds until the model unloads, read from `/api/ps` right after the answer (None: not loaded).
    pub expires_in_s: Option<f64>,
}

/// Sends `count` short Ollama requests `gap` apart without a `keep_alive`, so the server's own default
/// applies, and reads `load_duration` and `/api/ps` after each.
pub async fn spaced(get: &Getter, model: &str, count: usize, gap: Duration) -> Option<SpacedProbe> {
    let body = json!({"model": model, "prompt": "Say hi.", "stream": false, "options": {"num_predict": 4}});
    let mut requests = Vec::new();
    for i in 0..count {
        if i > 0 {
            // The pause is the probe itself: an idle server is what unloads a model.
            tokio::time::sleep(gap).await;
        }
        let answer = get.post("/api/generate", &body).await?;
        let ms = |key: &str| answer[key].as_f64().unwrap_or(0.0) / 1e6;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let expires_in_s = get.json("/api/ps").await.and_then(|ps| {
            let models = ps["models"].as_array()?.clone();
            let m =
                models.iter().find(|m| m["name"].as_str().is_some_and(|n| crate::backend::names_model(n, model)))?;
            Some(rfc3339_secs(m["expires_at"].as_str()?)? - now.as_secs_f64())
        });
        requests.push(SpacedRequest { load_ms: ms("load_duration"), total_ms: ms("total_duration"), expires_in_s });
    }
    Some(SpacedProbe { gap_s: gap.as_secs_f64(), requests })
}
