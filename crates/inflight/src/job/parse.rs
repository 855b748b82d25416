//! Turning one input line into a [`Job`] or a [`BadLine`].
//!
//! Three shapes are accepted (see the README): OpenAI Batch request lines (`url` + `body`), simple lines
//! (`prompt`, `messages` or `input`), and any object rendered through `--template`. Flags give defaults that a
//! line's own fields override. A line that cannot become a job is a [`BadLine`] with a short code; it never
//! stops the run.

use crate::code::ErrorCode;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{check_body, Endpoint, Job, Template};

/// Request defaults from the command line; a line's own fields win.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestDefaults {
    /// `--model`
    pub model: Option<String>,
    /// `--max-tokens`
    pub max_tokens: Option<u64>,
    /// `--temperature`
    pub temperature: Option<f64>,
    /// `--seed`
    pub seed: Option<i64>,
    /// `--param key=value`, in order; values are JSON when they parse as JSON, strings otherwise.
    pub params: Vec<(String, Value)>,
    /// `--system`: a system message for prompt and template lines.
    pub system: Option<String>,
    /// `--completions`: send `prompt` lines to `/v1/completions` instead of chat.
    pub completions: bool,
}

/// An input line that could not become a job. Keyed by line number, never by id.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    /// 1-based input line number.
    pub line: u64,
    /// What kind of bad line it is (`invalid_json`, ...).
    pub code: ErrorCode,
    /// What is wrong, for a human.
    pub message: String,
    /// The line's own id (`custom_id`, else `id`) when it has a readable one, so the user can match the record
    /// to the line; never the line-number fallback, which the record's `line` already says.
    pub custom_id: Option<String>,
}

/// How every command prints a bad line: `run --dry-run`, and `bench` and `doctor` when they skip one.
impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.custom_id {
            Some(id) => write!(f, "line {} (id {id:?}): {} ({})", self.line, self.code, self.message),
            None => write!(f, "line {}: {} ({})", self.line, self.code, self.message),
        }
    }
}

impl BadLine {
    /// A bad line at `line`.
    pub fn new(line: u64, code: ErrorCode, message: impl Into<String>) -> BadLine {
        BadLine { line, code, message: message.into(), custom_id: None }
    }
}

/// Parses lines with fixed defaults and an optional template.
pub struct Parser {
    defaults: RequestDefaults,
    template: Option<(Template, String)>,
    fields_only: bool,
}

impl Parser {
    /// A parser; `template` is the compiled template and its source text (the source goes into the fingerprint).
    pub fn new(defaults: RequestDefaults, template: Option<(Template, String)>) -> Parser {
        Parser { defaults, template, fields_only: false }
    }

    /// A parser that keeps each line's fields as the job's body, for workflows: their steps render requests
    /// from the fields when they run.
    pub fn fields_only() -> Parser {
        Parser { defaults: RequestDefaults::default(), template: None, fields_only: true }
    }

    /// A digest of everything that shapes a request besides the input line itself: the run's identity.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.defaults).expect("defaults serialize"));
        if let Some((_, src)) = &self.template {
            h.update(b"\0template\0");
            h.update(src.as_bytes());
        }
        hex(&h.finalize())
    }

    /// Parses one line. `Ok(None)` for a blank line, which is not a job.
    pub fn parse(&self, line: u64, bytes: &[u8]) -> Result<Option<Job>, BadLine> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| BadLine::new(line, ErrorCode::InvalidUtf8, format!("line is not valid UTF-8: {e}")))?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| BadLine::new(line, ErrorCode::InvalidJson, format!("line is not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(BadLine::new(line, ErrorCode::NotAnObject, "line must be a JSON object"));
        };
        let custom_id = explicit_id(&obj).ok().flatten();
        self.parse_object(line, obj).map(Some).map_err(|bad| BadLine { custom_id, ..bad })
    }

    fn parse_object(&self, line: u64, obj: Map<String, Value>) -> Result<Job, BadLine> {
        if self.fields_only {
            let id = job_id(line, &obj)?;
            return Ok(Job { line, id, endpoint: Endpoint::Chat, body: Value::Object(obj).to_string() });
        }
        let batch = self.template.is_none() && ["method", "url", "body"].iter().any(|k| obj.contains_key(*k));
        // The OpenAI Batch format requires a `custom_id`; only the simpler shapes fall back to the line number.
        if batch && obj.get("custom_id").is_none_or(Value::is_null) {
            return Err(BadLine::new(
                line,
                ErrorCode::MissingField,
                "an OpenAI Batch line (with \"method\", \"url\" or \"body\") needs a \"custom_id\"",
            ));
        }
        let id = job_id(line, &obj)?;
        let (endpoint, body) = if let Some((tmpl, _)) = &self.template {
            let prompt = tmpl
                .render(&Value::Object(obj))
                .map_err(|e| BadLine::new(line, ErrorCode::TemplateError, e.to_string()))?;
            (Endpoint::Chat, self.chat_body(Map::new(), prompt))
        } else if batch {
            batch_line(line, obj)?
        } else {
            self.simple_line(line, obj)?
        };
        let body = self.apply_defaults(endpoint, body);
        // Checked as it will be sent (rendered, defaults applied), so a template's output is checked too.
        check_body(endpoint, &body).map_err(|e| BadLine::new(line, e.code(), e.to_string()))?;
        Ok(Job { line, id, endpoint, body: Value::Object(body).to_string() })
    }

    fn chat_body(&self, mut body: Map<String, Value>, prompt: String) -> Map<String, Value> {
        let mut messages = Vec::new();
        if let Some(system) = &self.defaults.system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.push(serde_json::json!({"role": "user", "content": prompt}));
        body.insert("messages".into(), Value::Array(messages));
        body
    }

    fn simple_line(&self, line: u64, mut obj: Map<String, Value>) -> Result<(Endpoint, Map<String, Value>), BadLine> {
        obj.remove("id");
        obj.remove("custom_id");
        if let Some(prompt) = obj.remove("prompt") {
            let Value::String(prompt) = prompt else {
                return Err(BadLine::new(line, ErrorCode::BadField, "\"prompt\" must be a string"));
            };
            if self.defaults.completions {
                obj.insert("prompt".into(), Value::String(prompt));
                return Ok((Endpoint::Completion, obj));
            }
            return Ok((Endpoint::Chat, self.chat_body(obj, prompt)));
        }
        // Their shapes are checked with every body's, once defaults are in (`check_body`).
        if obj.contains_key("messages") {
            return Ok((Endpoint::Chat, obj));
        }
        if obj.contains_key("input") {
            return Ok((Endpoint::Embedding, obj));
        }
        Err(BadLine::new(
            line,
            ErrorCode::MissingField,
            "line needs \"prompt\", \"messages\" or \"input\" (or a \"url\" and \"body\"; or use --template)",
        ))
    }

    fn apply_defaults(&self, endpoint: Endpoint, mut body: Map<String, Value>) -> Map<String, Value> {
        let d = &self.defaults;
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                body.entry(key.to_string()).or_insert(v);
            }
        };
        set("model", d.model.clone().map(Value::String));
        if endpoint != Endpoint::Embedding {
            set("max_tokens", d.max_tokens.map(Value::from));
            set("temperature", d.temperature.map(Value::from));
            set("seed", d.seed.map(Value::from));
            for (k, v) in &d.params {
                set(k, Some(v.clone()));
            }
        }
        body
    }
}

fn batch_line(line: u64, mut obj: Map<String, Value>) -> Result<(Endpoint, Map<String, Value>), BadLine> {
    if let Some(method) = obj.get("method") {
        if method.as_str().map(|m| !m.eq_ignore_ascii_case("POST")).unwrap_or(true) {
            return Err(BadLine::new(line, ErrorCode::BadField, "\"method\" must be \"POST\""));
        }
    }
    let url = obj.get("url").and_then(Value::as_str).unwrap_or_default();
    let endpoint = Endpoint::from_path(url).ok_or_else(|| {
        BadLine::new(
            line,
            ErrorCode::BadUrl,
            format!("unsupported \"url\" {url:?}: use /v1/chat/completions, /v1/completions or /v1/embeddings"),
        )
    })?;
    match obj.remove("body") {
        Some(Value::Object(body)) => Ok((endpoint, body)),
        Some(_) => Err(BadLine::new(line, ErrorCode::BadField, "\"body\" must be a JSON object")),
        None => Err(BadLine::new(line, ErrorCode::MissingField, "batch line has a \"url\" but no \"body\"")),
    }
}

/// A job's id: its own (see [`explicit_id`]), else its line number.
fn job_id(line: u64, obj: &Map<String, Value>) -> Result<String, BadLine> {
    match explicit_id(obj) {
        Ok(id) => Ok(id.unwrap_or_else(|| line.to_string())),
        Err(key) => {
            Err(BadLine::new(line, ErrorCode::BadId, format!("\"{key}\" must be a non-empty string or a number")))
        }
    }
}

/// The line's own id: `custom_id`, else `id`; `Err` names the first of them present that is not a non-empty
/// string or a number.
fn explicit_id(obj: &Map<String, Value>) -> Result<Option<String>, &'static str> {
    for key in ["custom_id", "id"] {
        match obj.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if !s.is_empty() => return Ok(Some(s.clone())),
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            Some(_) => return Err(key),
        }
    }
    Ok(None)
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parser() -> Parser {
        Parser::new(RequestDefaults { model: Some("m".into()), max_tokens: Some(64), ..Default::default() }, None)
    }

    fn body(job: &Job) -> Value {
        serde_json::from_str(&job.body).unwrap()
    }

    #[test]
    fn prompt_line_becomes_chat_with_defaults_and_line_number_id() {
        let job = parser().parse(7, br#"{"prompt": "hi", "temperature": 0.5}"#).unwrap().unwrap();
        assert_eq!(job.id, "7");
        assert_eq!(job.endpoint, Endpoint::Chat);
        assert_eq!(
            body(&job),
            json!({"messages": [{"role": "user", "content": "hi"}], "model": "m", "max_tokens": 64, "temperature": 0.5})
        );
    }

    #[test]
    fn line_fields_override_flags() {
        let job =
            parser().parse(1, br#"{"id": 5, "prompt": "x", "model": "other", "max_tokens": 3}"#).unwrap().unwrap();
        assert_eq!(job.id, "5");
        assert_eq!(body(&job)["model"], "other");
        assert_eq!(body(&job)["max_tokens"], 3);
    }

    #[test]
    fn batch_line_keeps_body_and_custom_id() {
        let line = br#"{"custom_id": "r1", "method": "POST", "url": "/v1/embeddings", "body": {"input": "a"}}"#;
        let job = parser().parse(2, line).unwrap().unwrap();
        assert_eq!((job.id.as_str(), job.endpoint), ("r1", Endpoint::Embedding));
        assert_eq!(body(&job), json!({"input": "a", "model": "m"}), "no generation defaults on embeddings");
    }

    #[test]
    fn bad_lines_get_codes() {
        let p = parser();
        let code = |l: &[u8]| p.parse(3, l).unwrap_err().code;
        assert_eq!(code(b"{nope"), ErrorCode::InvalidJson);
        assert_eq!(code(b"[1]"), ErrorCode::NotAnObject);
        assert_eq!(code(b"\xff\xfe"), ErrorCode::InvalidUtf8);
        assert_eq!(code(br#"{"foo": 1}"#), ErrorCode::MissingField);
        assert_eq!(code(br#"{"custom_id": "u", "url": "/v1/x", "body": {}}"#), ErrorCode::BadUrl);
        assert_eq!(code(br#"{"id": [1], "prompt": "x"}"#), ErrorCode::BadId);
        assert!(p.parse(3, b"  ").unwrap().is_none());
    }

    #[test]
    fn a_body_its_url_cannot_take_is_a_bad_line_that_keeps_its_id() {
        let p = parser();
        let bad = |l: &str| p.parse(4, l.as_bytes()).unwrap_err();
        let b =
            bad(r#"{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": "x"}}"#);
        assert_eq!((b.line, b.code, b.custom_id.as_deref()), (4, ErrorCode::BadField, Some("r1")));
        assert!(b.message.contains("\"messages\""), "{}", b.message);
        let b = bad(r#"{"custom_id": "r2", "url": "/v1/embeddings", "body": {}}"#);
        assert_eq!((b.code, b.custom_id.as_deref()), (ErrorCode::MissingField, Some("r2")));
        let b = bad(r#"{"custom_id": "r3", "url": "/v1/nope", "body": {}}"#);
        assert_eq!((b.code, b.custom_id.as_deref()), (ErrorCode::BadUrl, Some("r3")));
        let b = bad(r#"{"id": 9, "messages": [{"role": "user"}], "stream": true}"#);
        assert_eq!((b.code, b.custom_id.as_deref()), (ErrorCode::BadField, Some("9")));
        let b = bad(r#"{"prompt": "x", "max_tokens": "many"}"#);
        assert_eq!((b.code, b.custom_id), (ErrorCode::BadField, None), "no own id: the record's line says which");
        let b = bad(r#"{"custom_id": ["r"], "prompt": "x"}"#);
        assert_eq!((b.code, b.custom_id), (ErrorCode::BadId, None));
    }

    #[test]
    fn a_batch_line_needs_a_custom_id_and_simple_lines_do_not() {
        let p = parser();
        for line in [
            r#"{"method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}]}}"#,
            r#"{"id": "a", "url": "/v1/embeddings", "body": {"input": "x"}}"#,
            r#"{"custom_id": null, "url": "/v1/embeddings", "body": {"input": "x"}}"#,
        ] {
            let b = p.parse(2, line.as_bytes()).unwrap_err();
            assert_eq!(b.code, ErrorCode::MissingField, "{line}");
            assert!(b.message.contains("custom_id"), "{}", b.message);
        }
        assert_eq!(p.parse(3, br#"{"input": "x"}"#).unwrap().unwrap().id, "3");
    }

    #[test]
    fn a_rendered_template_is_checked_with_the_defaults_in() {
        let t = Template::new("{{ x }}".into()).unwrap();
        let d = RequestDefaults { params: vec![("stop".into(), json!(5))], ..Default::default() };
        let p = Parser::new(d, Some((t, "{{ x }}".into())));
        let b = p.parse(1, br#"{"id": "t1", "x": "hi"}"#).unwrap_err();
        assert_eq!((b.code, b.custom_id.as_deref()), (ErrorCode::BadField, Some("t1")));
        assert_eq!(b.message, "\"stop\" must be a string or a list of strings");
    }

    #[test]
    fn template_renders_fields_with_system() {
        let t = Template::new("Claims: {{ segment }}".into()).unwrap();
        let d = RequestDefaults { system: Some("be brief".into()), ..Default::default() };
        let p = Parser::new(d, Some((t, "Claims: {{ segment }}".into())));
        let job = p.parse(1, br#"{"id": "s1", "segment": "sky is blue"}"#).unwrap().unwrap();
        assert_eq!(body(&job)["messages"][1]["content"], "Claims: sky is blue");
        assert_eq!(body(&job)["messages"][0]["role"], "system");
        assert_eq!(p.parse(2, br#"{"x": 1}"#).unwrap_err().code, ErrorCode::TemplateError);
    }

    #[test]
    fn numbers_are_sent_as_written() {
        // Found by the property tests: serde_json's default float parsing is off by one unit in the last place
        // for some 17-digit numbers, so the body sent was not the line's.
        let p = Parser::new(RequestDefaults::default(), None);
        let job = p.parse(1, br#"{"prompt": "x", "temperature": 1.1624331322112293}"#).unwrap().unwrap();
        assert!(job.body.contains(r#""temperature":1.1624331322112293"#), "{}", job.body);
    }

    #[test]
    fn fingerprint_changes_with_settings() {
        let a = parser().fingerprint();
        let b = Parser::new(RequestDefaults { model: Some("n".into()), ..Default::default() }, None).fingerprint();
        assert_ne!(a, b);
        assert_eq!(a, parser().fingerprint());
    }
}
