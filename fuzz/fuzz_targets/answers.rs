//! The answer parsers over any bytes: a whole answer (OpenAI chat, completion, embedding; Ollama's three) and a
//! stream of lines (OpenAI server-sent events, Ollama NDJSON). Each is read or refused with an error, never a
//! panic; an accepted answer has its endpoint's shape, and an accepted stream saw its end marker.
//!
//! The first byte picks the parser; the rest is what the server sent.
#![no_main]

use std::time::Duration;

use inflight::backend::parse::{ollama_answer, openai_answer};
use inflight::backend::{BackendError, TokenClock};
use inflight::job::Endpoint;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ENDPOINTS: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completion, Endpoint::Embedding];

/// The body as the HTTP layer reads a 2xx answer: lossily decoded, then JSON (else a malformed answer).
fn json_of(bytes: &[u8]) -> Option<(Value, String)> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    serde_json::from_str(&text).ok().map(|v| (v, text))
}

fn openai(endpoint: Endpoint, bytes: &[u8]) {
    let Some((body, text)) = json_of(bytes) else { return };
    let shaped = match endpoint {
        Endpoint::Embedding => body["data"].is_array(),
        _ => body["choices"].is_array(),
    };
    match openai_answer(endpoint, &body, text.clone(), None) {
        Ok(a) => {
            assert!(shaped);
            assert_eq!(a.body, text);
            assert_eq!(a.prompt_tokens, body["usage"]["prompt_tokens"].as_i64());
        }
        Err(e) => assert!(!shaped && matches!(e, BackendError::Malformed { .. }), "{e:?}"),
    }
}

fn ollama(endpoint: Endpoint, bytes: &[u8]) {
    let Some((body, _)) = json_of(bytes) else { return };
    match ollama_answer(endpoint, "/api/x", &body, 1) {
        Ok(a) => {
            // The translation is an OpenAI answer of the endpoint's shape.
            let translated: Value = serde_json::from_str(&a.body).expect("the translation is JSON");
            openai_answer(endpoint, &translated, a.body.clone(), None).expect("the translation has its shape");
        }
        Err(e) => assert!(matches!(e, BackendError::Malformed { .. }), "{e:?}"),
    }
}

/// Splits `bytes` into lines as the HTTP layer does for a stream, timed by their offset.
fn stream(bytes: &[u8], ollama: bool) {
    let mut clock = TokenClock::default();
    let mut ended = false;
    let mut at = Duration::ZERO;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        at = Duration::from_micros(i as u64 * 10);
        let text = String::from_utf8_lossy(raw);
        let line = text.trim_end();
        if ollama {
            clock.ollama_line(line, at);
            ended |= serde_json::from_str::<Value>(line).is_ok_and(|v| v["done"] == true);
        } else {
            clock.openai_line(line, at);
            ended |= line.strip_prefix("data:").is_some_and(|d| d.trim() == "[DONE]");
        }
    }
    match clock.finish(at) {
        Ok(s) => {
            assert!(ended, "a stream without its end marker was accepted");
            assert!(s.first_token.is_none_or(|f| f <= at) && s.inter_token.is_none_or(|t| t <= at));
        }
        Err(e) => assert!(!ended || matches!(e, BackendError::Malformed { .. }), "{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    match pick % 8 {
        n @ 0..=2 => openai(ENDPOINTS[n as usize], rest),
        n @ 3..=5 => ollama(ENDPOINTS[n as usize - 3], rest),
        6 => stream(rest, false),
        _ => stream(rest, true),
    }
});
