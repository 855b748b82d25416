//! Property tests of the line parser and the templates: any bytes give a job, a blank line or a numbered bad
//! line (never a panic), and every well-formed line of each shape becomes the job it describes. The fuzz targets
//! in `fuzz/` search the same ground for longer, outside CI.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::{Endpoint, Parser, RequestDefaults, Template};
use crate::code::ErrorCode;

/// Cases per property: enough to find a shallow bug every run, few enough for CI on two cores.
const CASES: u32 = 256;

/// Keys the parsers read, and a few they do not, so generated objects hit the interesting fields.
const KEYS: &[&str] = &[
    "prompt",
    "messages",
    "input",
    "role",
    "content",
    "type",
    "custom_id",
    "id",
    "method",
    "url",
    "body",
    "model",
    "stream",
    "max_tokens",
    "temperature",
    "stop",
    "choices",
    "data",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "message",
    "text",
    "delta",
    "done",
    "done_reason",
    "embeddings",
    "error",
    "eval_count",
    "prompt_eval_count",
    "eval_duration",
    "load_duration",
    "timings",
    "x",
];

/// Any JSON value, with object keys mostly from [`KEYS`]: a strategy the response parsers' properties share.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![any::<String>(), Just("/v1/chat/completions".to_owned()), Just("[DONE]".to_owned())]
            .prop_map(Value::from),
    ];
    let key = prop_oneof![4 => proptest::sample::select(KEYS).prop_map(str::to_owned), 1 => any::<String>()];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON value that is not an object.
fn non_object() -> impl Strategy<Value = Value> {
    json_value().prop_filter("not an object", |v| !v.is_object())
}

/// A readable id: a non-empty string or a number.
fn explicit_id() -> impl Strategy<Value = Value> {
    prop_oneof![".+".prop_map(Value::from), any::<u64>().prop_map(Value::from), any::<i64>().prop_map(Value::from)]
}

/// What the parser makes of a readable id.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A chat message list that fits the chat endpoint.
fn messages() -> impl Strategy<Value = Value> {
    let role = prop_oneof![Just("system"), Just("user"), Just("assistant"), Just("tool")];
    vec((role, any::<String>()), 1..5).prop_map(|ms| {
        Value::Array(ms.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect())
    })
}

/// A body that fits `endpoint`, with some optional typed fields.
fn body_for(endpoint: Endpoint) -> impl Strategy<Value = Map<String, Value>> {
    let required = match endpoint {
        Endpoint::Chat => messages().prop_map(|m| ("messages", m)).boxed(),
        Endpoint::Completion => any::<String>().prop_map(|p| ("prompt", Value::from(p))).boxed(),
        Endpoint::Embedding => prop_oneof![".+".prop_map(Value::from), vec(".+", 1..4).prop_map(Value::from)]
            .prop_map(|i| ("input", i))
            .boxed(),
    };
    let model = proptest::option::of("[a-z0-9:./-]{1,20}");
    let max_tokens = proptest::option::of(any::<u32>());
    let stream = proptest::option::of(any::<bool>());
    (required, model, max_tokens, stream).prop_map(|((key, value), model, max_tokens, stream)| {
        let mut body = Map::new();
        body.insert(key.into(), value);
        if let Some(m) = model {
            body.insert("model".into(), m.into());
        }
        if let Some(n) = max_tokens {
            body.insert("max_tokens".into(), n.into());
        }
        if let Some(s) = stream {
            body.insert("stream".into(), s.into());
        }
        body
    })
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![Just(Endpoint::Chat), Just(Endpoint::Completion), Just(Endpoint::Embedding)]
}

/// Parsers in each configuration that changes how a line is read.
fn parsers() -> Vec<Parser> {
    let template = Template::new("Claims in: {{ segment }}".into()).unwrap();
    let defaults = RequestDefaults {
        model: Some("m".into()),
        max_tokens: Some(64),
        temperature: Some(0.5),
        params: vec![("top_k".into(), json!(40))],
        system: Some("be brief".into()),
        ..Default::default()
    };
    vec![
        Parser::new(RequestDefaults::default(), None),
        Parser::new(RequestDefaults { completions: true, ..defaults.clone() }, None),
        Parser::new(defaults, Some((template, "Claims in: {{ segment }}".into()))),
        Parser::fields_only(),
    ]
}

fn parse_json(line: u64, v: &Value) -> Result<Option<super::Job>, super::BadLine> {
    Parser::new(RequestDefaults::default(), None).parse(line, v.to_string().as_bytes())
}

/// Whatever `bytes` are: a blank line, a job numbered `line` whose body is a JSON object, or a bad line
/// numbered `line` with a message.
fn check_any_line(p: &Parser, line: u64, bytes: &[u8]) -> Result<(), TestCaseError> {
    match p.parse(line, bytes) {
        Ok(None) => prop_assert!(std::str::from_utf8(bytes).is_ok_and(|t| t.trim().is_empty())),
        Ok(Some(job)) => {
            prop_assert_eq!(job.line, line);
            prop_assert!(!job.id.is_empty());
            let body: Value = serde_json::from_str(&job.body).expect("a job's body is JSON");
            prop_assert!(body.is_object());
        }
        Err(bad) => {
            prop_assert_eq!(bad.line, line);
            prop_assert!(!bad.message.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_bytes_are_a_job_a_blank_or_a_numbered_bad_line(bytes in vec(any::<u8>(), 0..256), line in 1u64..) {
        for p in parsers() {
            check_any_line(&p, line, &bytes)?;
        }
    }

    #[test]
    fn any_json_is_a_job_or_a_numbered_bad_line(v in json_value(), line in 1u64..) {
        let text = v.to_string();
        for p in parsers() {
            check_any_line(&p, line, text.as_bytes())?;
        }
    }

    #[test]
    fn a_prompt_line_becomes_its_chat_or_completion_body(
        prompt in any::<String>(),
        id in proptest::option::of(explicit_id()),
        // Any float, 17 digits included: the parser reads numbers with serde_json's float_roundtrip, so a
        // body is sent with the line's own value (the default parse was one unit in the last place off).
        temperature in proptest::option::of(0.0f64..2.0),
        line in 1u64..,
    ) {
        let mut obj = json!({"prompt": prompt});
        if let Some(id) = &id {
            obj["id"] = id.clone();
        }
        if let Some(t) = temperature {
            obj["temperature"] = t.into();
        }
        let want_id = id.as_ref().map_or(line.to_string(), id_text);
        let job = parse_json(line, &obj).unwrap().unwrap();
        prop_assert_eq!((&job.id, job.endpoint, job.line), (&want_id, Endpoint::Chat, line));
        let mut want = json!({"messages": [{"role": "user", "content": prompt}]});
        if let Some(t) = temperature {
            want["temperature"] = t.into();
        }
        prop_assert_eq!(serde_json::from_str::<Value>(&job.body).unwrap(), want);

        let completions = Parser::new(RequestDefaults { completions: true, ..Default::default() }, None);
        let job = completions.parse(line, obj.to_string().as_bytes()).unwrap().unwrap();
        prop_assert_eq!((&job.id, job.endpoint), (&want_id, Endpoint::Completion));
        let body: Value = serde_json::from_str(&job.body).unwrap();
        prop_assert_eq!(body["prompt"].as_str(), Some(prompt.as_str()));
    }

    #[test]
    fn a_messages_line_keeps_its_messages(
        messages in messages(),
        custom_id in proptest::option::of(".+"),
        line in 1u64..,
    ) {
        let mut obj = json!({"messages": messages});
        if let Some(id) = &custom_id {
            obj["custom_id"] = id.clone().into();
            obj["id"] = "ignored: custom_id wins".into();
        }
        let job = parse_json(line, &obj).unwrap().unwrap();
        prop_assert_eq!(job.id, custom_id.unwrap_or(line.to_string()));
        prop_assert_eq!(job.endpoint, Endpoint::Chat);
        prop_assert_eq!(serde_json::from_str::<Value>(&job.body).unwrap(), json!({"messages": messages}));
    }

    #[test]
    fn a_batch_line_becomes_its_url_and_body(
        (endpoint, body) in endpoint().prop_flat_map(|e| (Just(e), body_for(e))),
        custom_id in explicit_id(),
        method in proptest::option::of(prop_oneof![Just("POST"), Just("post")]),
        line in 1u64..,
    ) {
        let mut obj = json!({"custom_id": custom_id, "url": endpoint.path(), "body": body});
        if let Some(m) = method {
            obj["method"] = m.into();
        }
        let job = parse_json(line, &obj).unwrap().unwrap();
        prop_assert_eq!((job.id, job.endpoint, job.line), (id_text(&custom_id), endpoint, line));
        prop_assert_eq!(serde_json::from_str::<Value>(&job.body).unwrap(), Value::Object(body));
    }

    #[test]
    fn a_bad_batch_line_keeps_its_custom_id(
        custom_id in ".+",
        broken in prop_oneof![
            Just(json!({"url": "/v1/nope", "body": {}})),
            Just(json!({"url": "/v1/chat/completions", "body": {"messages": "not a list"}})),
            Just(json!({"url": "/v1/embeddings", "body": {"input": ""}})),
            Just(json!({"url": "/v1/completions", "body": []})),
            Just(json!({"method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}})),
        ],
        line in 1u64..,
    ) {
        let mut obj = broken;
        obj["custom_id"] = custom_id.clone().into();
        let bad = parse_json(line, &obj).unwrap_err();
        prop_assert_eq!(bad.line, line);
        prop_assert_eq!(bad.custom_id, Some(custom_id));
    }

    #[test]
    fn invalid_utf8_is_a_numbered_bad_line(
        text in any::<String>(),
        at in any::<prop::sample::Index>(),
        junk in prop_oneof![Just(0xffu8), Just(0xfe), Just(0xc0), Just(0x80)],
        line in 1u64..,
    ) {
        let mut bytes = text.into_bytes();
        bytes.insert(at.index(bytes.len() + 1), junk);
        for p in parsers() {
            let bad = p.parse(line, &bytes).unwrap_err();
            prop_assert_eq!((bad.line, bad.code), (line, ErrorCode::InvalidUtf8));
        }
    }

    #[test]
    fn json_that_is_not_an_object_is_a_numbered_bad_line(v in non_object(), line in 1u64..) {
        for p in parsers() {
            let bad = p.parse(line, v.to_string().as_bytes()).unwrap_err();
            prop_assert_eq!((bad.line, bad.code), (line, ErrorCode::NotAnObject));
        }
    }

    #[test]
    fn a_cut_object_is_a_numbered_invalid_json_line(v in json_value(), line in 1u64..) {
        let text = json!({"prompt": v}).to_string();
        let cut = &text[..text.len() - 1];
        for p in parsers() {
            let bad = p.parse(line, cut.as_bytes()).unwrap_err();
            prop_assert_eq!((bad.line, bad.code), (line, ErrorCode::InvalidJson));
        }
    }

    #[test]
    fn a_template_renders_any_field_values_the_same_every_time(
        segment in json_value(),
        meta in json_value(),
        items in vec(json_value(), 0..4),
    ) {
        let source = "Claims in: {{ segment }} {{ meta | tojson }} {% for i in items %}[{{ i }}]{% endfor %} \
                      {{ meta.x | default('none') }} {{ items | length }}";
        let t = Template::new(source.into()).unwrap();
        let fields = json!({"segment": segment, "meta": meta, "items": items});
        let first = t.render(&fields);
        let second = t.clone().render(&fields);
        prop_assert_eq!(first.as_ref().map_err(ToString::to_string), second.as_ref().map_err(ToString::to_string));
        let p = Parser::new(RequestDefaults::default(), Some((t, source.into())));
        let line = serde_json::to_vec(&fields).unwrap();
        prop_assert_eq!(p.parse(1, &line), p.parse(1, &line));
    }

    #[test]
    fn a_string_field_renders_as_itself(s in any::<String>()) {
        let t = Template::new("{{ s }}".into()).unwrap();
        prop_assert_eq!(t.render(&json!({"s": s})).unwrap(), s);
    }

    #[test]
    fn any_template_source_compiles_or_is_an_error_and_its_fingerprint_is_stable(
        source in prop_oneof![any::<String>(), "[{}%#a-z |().'\"~+*-]{0,40}"],
        model in proptest::option::of("[a-z]{1,8}"),
    ) {
        let Ok(t) = Template::new(source.clone()) else { return Ok(()) };
        t.variables();
        let defaults = RequestDefaults { model, ..Default::default() };
        let a = Parser::new(defaults.clone(), Some((t.clone(), source.clone())));
        let b = Parser::new(defaults.clone(), Some((t.clone(), source.clone())));
        prop_assert_eq!(a.fingerprint(), b.fingerprint());
        let other = Parser::new(defaults.clone(), Some((t.clone(), format!("{source} "))));
        prop_assert_ne!(a.fingerprint(), other.fingerprint());
        prop_assert_ne!(a.fingerprint(), Parser::new(defaults, None).fingerprint());
    }
}
