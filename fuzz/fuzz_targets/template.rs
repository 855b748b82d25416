//! Templates: any source compiles or is an error (never a panic) and its fingerprint is stable; and fixed
//! templates render any field values (a JSON object, or any text as a field) the same way every time.
//!
//! Arbitrary sources are compiled, not rendered: a template can loop for as long as its author asks (nested
//! `range`s), which is the author's own doing, not a bug the fuzzer should stop on.
#![no_main]

use std::sync::LazyLock;

use inflight::job::{Parser, RequestDefaults, Template};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const TEMPLATES: &[&str] = &[
    include_str!("../../examples/claims.j2"),
    "Claims in: {{ segment }}",
    "{{ segment }} {{ meta | tojson }} {% for i in items %}[{{ i }}]{% endfor %}",
    "{% if meta.n is defined and meta.n > 1 %}{{ meta.n }}{% else %}{{ segment | upper }}{% endif %}",
    "{{ segment | default('none') }} {{ items | length }} {{ items | join(', ') }} {{ meta | items | list }}",
    "{% for k, v in meta | items %}{{ k }}={{ v }};{% endfor %}{{ segment | trim | lower | replace('a', 'b') }}",
];

/// The fixed templates, each compiled once, with a parser that renders lines through it.
static COMPILED: LazyLock<Vec<(Template, Parser)>> = LazyLock::new(|| {
    TEMPLATES
        .iter()
        .map(|source| {
            let t = Template::new((*source).into()).expect("a fixed template compiles");
            (t.clone(), Parser::new(RequestDefaults::default(), Some((t, (*source).into()))))
        })
        .collect()
});

fn render_all(fields: &Value) {
    let line = fields.to_string();
    for (t, p) in COMPILED.iter() {
        let first = t.render(fields).map_err(|e| e.to_string());
        let again = t.render(fields).map_err(|e| e.to_string());
        assert_eq!(first, again, "rendering is deterministic");
        assert_eq!(p.parse(1, line.as_bytes()), p.parse(1, line.as_bytes()));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let Ok(source) = std::str::from_utf8(rest) else { return };
            let Ok(t) = Template::new(source.into()) else { return };
            t.variables();
            let a = Parser::new(RequestDefaults::default(), Some((t.clone(), source.into()))).fingerprint();
            let b = Parser::new(RequestDefaults::default(), Some((t.clone(), source.into()))).fingerprint();
            assert_eq!(a, b, "a template's fingerprint is stable");
            let other = Parser::new(RequestDefaults::default(), Some((t, format!("{source} ")))).fingerprint();
            assert_ne!(a, other, "a different source has a different fingerprint");
        }
        1 => {
            // The rest as the fields of a line, when it is a JSON object.
            if let Ok(fields @ Value::Object(_)) = serde_json::from_slice::<Value>(rest) {
                render_all(&fields);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let half = text.len() / 2;
            let cut = (0..=half).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            let (a, b) = text.split_at(cut);
            render_all(&json!({"segment": a, "meta": {"n": b.len(), "x": b}, "items": [a, b]}));
            let t = Template::new("{{ segment }}".into()).expect("compiles");
            assert_eq!(t.render(&json!({"segment": text})).unwrap(), text, "a string field renders as itself");
        }
    }
});
