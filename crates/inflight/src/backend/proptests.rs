//! Property tests of the answer parsers: whatever a server sends back, a whole answer (OpenAI's or Ollama's) or a
//! stream of lines (server-sent events or NDJSON), it is read or refused with an error, never a panic. The fuzz
//! targets in `fuzz/` search the same ground for longer, outside CI.

use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::parse::{ollama_answer, openai_answer};
use super::{BackendError, TokenClock};
use crate::job::proptests::json_value;
use crate::job::Endpoint;

const CASES: u32 = 256;
const ENDPOINTS: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completion, Endpoint::Embedding];

/// An answer body as the HTTP layer reads it: bytes, lossily decoded, then JSON or a malformed answer.
fn openai_bytes(endpoint: Endpoint, bytes: &[u8]) -> Result<super::Answer, BackendError> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let body: Value = serde_json::from_str(&text).map_err(|e| BackendError::malformed(e.to_string()))?;
    openai_answer(endpoint, &body, text, None)
}

/// An OpenAI answer's checks: accepted exactly when it has the endpoint's shape, and then its figures are the
/// body's own.
fn check_openai(endpoint: Endpoint, body: &Value) -> Result<(), TestCaseError> {
    let shaped = match endpoint {
        Endpoint::Embedding => body["data"].is_array(),
        _ => body["choices"].is_array(),
    };
    match openai_answer(endpoint, body, body.to_string(), None) {
        Ok(a) => {
            prop_assert!(shaped);
            prop_assert_eq!(a.prompt_tokens, body["usage"]["prompt_tokens"].as_i64());
            prop_assert_eq!(a.completion_tokens, body["usage"]["completion_tokens"].as_i64());
            prop_assert_eq!(a.request_id.as_deref(), body["id"].as_str());
            prop_assert_eq!(a.body, body.to_string());
        }
        Err(e) => {
            prop_assert!(!shaped);
            prop_assert!(matches!(e, BackendError::Malformed { .. }), "{e:?}");
        }
    }
    Ok(())
}

/// Lines of a stream: a mix of well-formed events, end markers and anything at all.
fn stream_lines() -> impl Strategy<Value = Vec<String>> {
    let line = prop_oneof![
        json_value().prop_map(|v| format!("data: {v}")),
        json_value().prop_map(|v| v.to_string()),
        any::<String>().prop_map(|s| format!("data: {s}")),
        any::<String>(),
        Just("data: [DONE]".to_owned()),
        Just(r#"data: {"choices":[{"delta":{"content":"a"}}]}"#.to_owned()),
        Just(r#"{"message":{"content":"a"},"done":false}"#.to_owned()),
        Just(r#"{"done":true,"eval_count":3,"eval_duration":0}"#.to_owned()),
        Just(String::new()),
    ];
    vec(line, 0..12)
}

/// Feeds `lines` at non-decreasing times (as they arrive) and checks what the stream comes to.
fn check_stream(lines: &[String], gaps: &[u32], ollama: bool) -> Result<(), TestCaseError> {
    let mut clock = TokenClock::default();
    let mut at = Duration::ZERO;
    for (line, gap) in lines.iter().zip(gaps.iter().cycle()) {
        at += Duration::from_micros(u64::from(*gap));
        if ollama {
            clock.ollama_line(line, at);
        } else {
            clock.openai_line(line, at);
        }
    }
    let ended = lines.iter().any(|l| {
        if ollama {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["done"] == true)
        } else {
            l.strip_prefix("data:").is_some_and(|d| d.trim() == "[DONE]")
        }
    });
    match clock.finish(at) {
        Ok(s) => {
            prop_assert!(ended, "a stream without its end marker was accepted");
            prop_assert!(s.first_token.is_none_or(|f| f <= at));
            prop_assert!(s.inter_token.is_none_or(|i| i <= at));
        }
        Err(e) => prop_assert!(!ended || matches!(e, BackendError::Malformed { .. }), "{e:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_bytes_are_an_openai_answer_or_malformed(bytes in vec(any::<u8>(), 0..256)) {
        for endpoint in ENDPOINTS {
            if let Err(e) = openai_bytes(endpoint, &bytes) {
                prop_assert!(matches!(e, BackendError::Malformed { .. }), "{e:?}");
            }
        }
    }

    #[test]
    fn any_json_is_an_openai_answer_exactly_when_it_has_the_endpoints_shape(
        v in json_value(),
        usage in json_value(),
        choices in vec(json_value(), 0..3),
    ) {
        let mut shaped = json!({"choices": choices, "data": choices, "usage": usage});
        if let Value::Object(extra) = &v {
            shaped.as_object_mut().unwrap().extend(extra.clone());
        }
        for endpoint in ENDPOINTS {
            check_openai(endpoint, &v)?;
            check_openai(endpoint, &shaped)?;
        }
    }

    #[test]
    fn an_ollama_answer_is_refused_or_becomes_an_openai_answer(
        v in json_value(),
        prompt in any::<i64>(),
        eval in any::<i64>(),
        done in any::<bool>(),
    ) {
        let mut shaped = json!({"message": {"content": "x"}, "response": "x", "embeddings": [[0.5]], "done": done,
                                "prompt_eval_count": prompt, "eval_count": eval});
        if let Value::Object(extra) = &v {
            shaped.as_object_mut().unwrap().extend(extra.clone());
        }
        for body in [&v, &shaped] {
            for endpoint in ENDPOINTS {
                let ok = match endpoint {
                    Endpoint::Embedding => body["embeddings"].is_array(),
                    _ => body["done"] == true,
                };
                match ollama_answer(endpoint, "/api/x", body, 7) {
                    Ok(a) => {
                        prop_assert!(ok);
                        prop_assert_eq!(a.request_id.as_deref(), Some("ollama-7"));
                        // What the translation makes is an OpenAI answer of the endpoint's shape.
                        let translated: Value = serde_json::from_str(&a.body).unwrap();
                        check_openai(endpoint, &translated)?;
                        prop_assert!(openai_answer(endpoint, &translated, a.body.clone(), None).is_ok());
                        prop_assert_eq!(a.prompt_tokens, Some(body["prompt_eval_count"].as_i64().unwrap_or(0)));
                    }
                    Err(e) => {
                        prop_assert!(!ok);
                        prop_assert!(matches!(e, BackendError::Malformed { .. }), "{e:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn any_openai_stream_is_timed_or_an_error(lines in stream_lines(), gaps in vec(any::<u32>(), 1..4)) {
        check_stream(&lines, &gaps, false)?;
    }

    #[test]
    fn any_ollama_stream_is_timed_or_an_error(lines in stream_lines(), gaps in vec(any::<u32>(), 1..4)) {
        check_stream(&lines, &gaps, true)?;
    }
}
