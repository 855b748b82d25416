//! The line reader and the line parser over any input: each line is a job, a blank line or a bad line with its
//! own line number, whatever the bytes, in every parser configuration that changes how a line is read.
#![no_main]

use std::sync::LazyLock;

use inflight::job::{LineReader, Parser, RawLine, RequestDefaults, Template};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// Small enough that the fuzzer reaches the over-long path too.
const MAX_LINE_BYTES: usize = 1024;
const TEMPLATE: &str = "Claims in: {{ segment }}";

/// Built once: a template compiles in far longer than a line parses.
static PARSERS: LazyLock<Vec<Parser>> = LazyLock::new(|| {
    let defaults = RequestDefaults {
        model: Some("m".into()),
        max_tokens: Some(64),
        temperature: Some(0.5),
        params: vec![("top_k".into(), json!(40))],
        system: Some("be brief".into()),
        ..Default::default()
    };
    let template = Template::new(TEMPLATE.into()).expect("the template compiles");
    vec![
        Parser::new(RequestDefaults::default(), None),
        Parser::new(RequestDefaults { completions: true, ..defaults.clone() }, None),
        Parser::new(defaults, Some((template, TEMPLATE.into()))),
        Parser::fields_only(),
    ]
});

fuzz_target!(|data: &[u8]| {
    let mut reader = LineReader::new(data, MAX_LINE_BYTES);
    let mut expected_line = 0;
    while let Some(raw) = reader.next_line().expect("reading from memory does not fail") {
        expected_line += 1;
        let (line, bytes) = match raw {
            RawLine::Line(line, bytes) => (line, bytes),
            RawLine::TooLong(line, len) => {
                assert_eq!(line, expected_line);
                assert!(len > MAX_LINE_BYTES as u64);
                continue;
            }
        };
        assert_eq!(line, expected_line);
        assert!(bytes.len() <= MAX_LINE_BYTES && !bytes.contains(&b'\n'));
        for p in PARSERS.iter() {
            match p.parse(line, &bytes) {
                Ok(None) => assert!(std::str::from_utf8(&bytes).is_ok_and(|t| t.trim().is_empty())),
                Ok(Some(job)) => {
                    assert_eq!(job.line, line);
                    assert!(!job.id.is_empty());
                    let body: Value = serde_json::from_str(&job.body).expect("a job's body is JSON");
                    assert!(body.is_object(), "a job's body is an object: {}", job.body);
                    // Parsing is a function of the line: the same line, the same job.
                    assert_eq!(p.parse(line, &bytes), Ok(Some(job)));
                }
                Err(bad) => {
                    assert_eq!(bad.line, line);
                    assert!(!bad.message.is_empty());
                    assert_ne!(bad.custom_id.as_deref(), Some(""));
                }
            }
        }
    }
    assert_eq!(reader.lines_read(), expected_line);
    assert_eq!(reader.bytes_read, data.len() as u64);
});
