//! The shapes of request bodies, checked at ingest so a body its endpoint cannot take becomes a numbered bad
//! line instead of a request the user learns about only from the server's answer (or, from a lenient server,
//! never).
//!
//! The check is deliberately shallow: the fields every OpenAI-compatible server reads and types alike. Fields
//! it does not know pass unchanged, since servers take extensions (`cache_prompt`, `options`, ...) that a
//! stricter check would refuse. An optional field that is `null` counts as absent, as in OpenAI's API.

use serde_json::{Map, Value};

use super::Endpoint;
use crate::code::ErrorCode;

/// Why a body does not fit its endpoint: the field (a path such as `messages[2].role`) and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as a path into the body.
    pub field: String,
    /// What was expected there, or `None` when the field is missing.
    pub expected: Option<&'static str>,
}

impl FieldError {
    /// The bad-line code: `missing_field` when the field is absent, `bad_field` when it is there but wrong.
    pub fn code(&self) -> ErrorCode {
        match self.expected {
            Some(_) => ErrorCode::BadField,
            None => ErrorCode::MissingField,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.expected {
            Some(expected) => write!(f, "\"{}\" must be {expected}", self.field),
            None => write!(f, "the body needs \"{}\"", self.field),
        }
    }
}

/// A check of one value's type.
type Check = fn(&Value) -> bool;

/// Optional fields and their types, for every endpoint: one table, so a field is typed once.
const TYPED: &[(&str, &str, Check)] = &[
    ("model", "a string", Value::is_string),
    ("stream", "a boolean", Value::is_boolean),
    ("max_tokens", "an integer", is_integer),
    ("n", "an integer", is_integer),
    ("seed", "an integer", is_integer),
    ("temperature", "a number", Value::is_number),
    ("top_p", "a number", Value::is_number),
    ("stop", "a string or a list of strings", is_string_or_strings),
];

fn is_integer(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

fn is_string_or_strings(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    }
}

fn is_token_array(v: &Value) -> bool {
    matches!(v, Value::Array(items) if !items.is_empty() && items.iter().all(is_integer))
}

/// An embeddings `input`: a non-empty string, or a non-empty list of strings, of token ids, or of token arrays.
fn is_embedding_input(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.is_empty(),
        Value::Array(items) if items.is_empty() => false,
        Value::Array(items) => {
            items.iter().all(|i| matches!(i, Value::String(s) if !s.is_empty()))
                || items.iter().all(is_integer)
                || items.iter().all(is_token_array)
        }
        _ => false,
    }
}

fn is_prompt(v: &Value) -> bool {
    v.is_string() || v.is_array()
}

/// A chat message's `content`: text, or a list of content parts (objects with a string `type`).
fn is_content(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(parts) => parts.iter().all(|p| p.get("type").is_some_and(Value::is_string)),
        _ => false,
    }
}

fn bad(field: impl Into<String>, expected: &'static str) -> FieldError {
    FieldError { field: field.into(), expected: Some(expected) }
}

fn missing(field: &str) -> FieldError {
    FieldError { field: field.into(), expected: None }
}

/// The required field of an endpoint's body, with its check.
fn required(endpoint: Endpoint) -> (&'static str, &'static str, Check) {
    match endpoint {
        Endpoint::Chat => {
            ("messages", "a non-empty list of messages", |v| matches!(v, Value::Array(m) if !m.is_empty()))
        }
        Endpoint::Completion => ("prompt", "a string or a list", is_prompt),
        Endpoint::Embedding => ("input", "a non-empty string or list (of strings or token arrays)", is_embedding_input),
    }
}

fn check_messages(messages: &[Value]) -> Result<(), FieldError> {
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(m) = message else {
            return Err(bad(format!("messages[{i}]"), "an object with a \"role\" and a \"content\""));
        };
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(bad(format!("messages[{i}].role"), "a string"));
        }
        // An assistant turn that calls tools carries its calls instead of text (OpenAI sends `content: null`).
        let content_optional = m.get("tool_calls").is_some_and(|c| !c.is_null());
        match m.get("content") {
            None | Some(Value::Null) if content_optional => {}
            Some(c) if is_content(c) => {}
            _ => return Err(bad(format!("messages[{i}].content"), "a string or a list of content parts")),
        }
    }
    Ok(())
}

/// Checks `body` against the shape `endpoint` takes; the first field that does not fit is the error.
pub fn check_body(endpoint: Endpoint, body: &Map<String, Value>) -> Result<(), FieldError> {
    let (name, expected, check) = required(endpoint);
    match body.get(name) {
        None => return Err(missing(name)),
        Some(v) if !check(v) => return Err(bad(name, expected)),
        Some(_) => {}
    }
    if let Some(Value::Array(messages)) = body.get("messages").filter(|_| endpoint == Endpoint::Chat) {
        check_messages(messages)?;
    }
    for (field, expected, check) in TYPED {
        match body.get(*field) {
            None | Some(Value::Null) => {}
            Some(v) if check(v) => {}
            Some(_) => return Err(bad(*field, expected)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(endpoint: Endpoint, body: Value) -> Result<(), String> {
        let Value::Object(body) = body else { panic!("not an object") };
        check_body(endpoint, &body).map_err(|e| e.to_string())
    }

    #[test]
    fn well_formed_bodies_pass() {
        use Endpoint::*;
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (Chat, json!({"messages": user})),
            (Chat, json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})),
            (Chat, json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c"}]}]})),
            (Chat, json!({"messages": user, "stream": false, "max_tokens": 8, "n": 1, "seed": -3})),
            (Chat, json!({"messages": user, "temperature": 0, "top_p": 0.9, "stop": ["\n"], "model": "m"})),
            (Chat, json!({"messages": user, "stop": "END", "temperature": null, "cache_prompt": true})),
            (Completion, json!({"prompt": "Once"})),
            (Completion, json!({"prompt": ["a", "b"], "max_tokens": 4})),
            (Embedding, json!({"input": "text"})),
            (Embedding, json!({"input": ["a", "b"]})),
            (Embedding, json!({"input": [1, 2, 3]})),
            (Embedding, json!({"input": [[1, 2], [3]]})),
        ];
        for (endpoint, body) in cases {
            assert_eq!(check(endpoint, body.clone()), Ok(()), "{endpoint:?} {body}");
        }
    }

    #[test]
    fn each_misfit_names_its_field_and_what_was_expected() {
        use Endpoint::*;
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (Chat, json!({}), "the body needs \"messages\""),
            (Chat, json!({"messages": "not a list"}), "\"messages\" must be a non-empty list of messages"),
            (Chat, json!({"messages": []}), "\"messages\" must be a non-empty list of messages"),
            (Chat, json!({"messages": ["hi"]}), "\"messages[0]\" must be an object with a \"role\" and a \"content\""),
            (Chat, json!({"messages": [{"content": "hi"}]}), "\"messages[0].role\" must be a string"),
            (Chat, json!({"messages": [{"role": 1, "content": "hi"}]}), "\"messages[0].role\" must be a string"),
            (
                Chat,
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "user"}]}),
                "\"messages[1].content\" must be a string or a list of content parts",
            ),
            (
                Chat,
                json!({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}),
                "\"messages[0].content\" must be a string or a list of content parts",
            ),
            (Chat, json!({"messages": user, "stream": "yes"}), "\"stream\" must be a boolean"),
            (Chat, json!({"messages": user, "max_tokens": "8"}), "\"max_tokens\" must be an integer"),
            (Chat, json!({"messages": user, "max_tokens": 8.5}), "\"max_tokens\" must be an integer"),
            (Chat, json!({"messages": user, "n": true}), "\"n\" must be an integer"),
            (Chat, json!({"messages": user, "seed": "1"}), "\"seed\" must be an integer"),
            (Chat, json!({"messages": user, "temperature": "hot"}), "\"temperature\" must be a number"),
            (Chat, json!({"messages": user, "top_p": [1]}), "\"top_p\" must be a number"),
            (Chat, json!({"messages": user, "stop": 5}), "\"stop\" must be a string or a list of strings"),
            (Chat, json!({"messages": user, "stop": ["a", 1]}), "\"stop\" must be a string or a list of strings"),
            (Chat, json!({"messages": user, "model": 3}), "\"model\" must be a string"),
            (Completion, json!({}), "the body needs \"prompt\""),
            (Completion, json!({"prompt": 42}), "\"prompt\" must be a string or a list"),
            (Completion, json!({"prompt": "x", "stream": 1}), "\"stream\" must be a boolean"),
            (Embedding, json!({}), "the body needs \"input\""),
            (
                Embedding,
                json!({"input": ""}),
                "\"input\" must be a non-empty string or list (of strings or token arrays)",
            ),
            (
                Embedding,
                json!({"input": []}),
                "\"input\" must be a non-empty string or list (of strings or token arrays)",
            ),
            (
                Embedding,
                json!({"input": {"a": 1}}),
                "\"input\" must be a non-empty string or list (of strings or token arrays)",
            ),
            (
                Embedding,
                json!({"input": ["a", 1]}),
                "\"input\" must be a non-empty string or list (of strings or token arrays)",
            ),
            (
                Embedding,
                json!({"input": [[1], []]}),
                "\"input\" must be a non-empty string or list (of strings or token arrays)",
            ),
            (Embedding, json!({"input": "a", "model": ["m"]}), "\"model\" must be a string"),
        ];
        for (endpoint, body, want) in cases {
            assert_eq!(check(endpoint, body.clone()), Err(want.to_owned()), "{endpoint:?} {body}");
        }
    }
}
