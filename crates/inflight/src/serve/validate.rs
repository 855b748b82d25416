//! A batch's input file checked before anything is sent, as OpenAI checks one while the batch is `validating`:
//! every line is read by the run's own reader and parser ([`JobReader`]), so a line refused here is exactly a
//! line the run would have refused, and each line must go to the batch's endpoint. Each `custom_id` must be
//! unique, as OpenAI requires (the ids are held while the file is read: memory grows with the file, which
//! `--max-upload` bounds). Any bad line fails the batch, with the first [`MAX_ERRORS`] of them in its `errors`.

use std::collections::HashSet;
use std::path::Path;

use super::objects::BatchError;
use crate::job::{Entry, JobReader, Parser};

/// The most errors a failed batch lists.
pub const MAX_ERRORS: usize = 100;

/// The number of jobs in `input`, or why the batch cannot run.
pub fn validate(input: &Path, endpoint: &str, parser: &Parser, max_line_bytes: u64) -> Result<u64, Vec<BatchError>> {
    let one = |code: &str, message: String| vec![BatchError { code: code.into(), message, param: None, line: None }];
    let mut reader =
        JobReader::open(input, max_line_bytes, parser).map_err(|e| one("input_file_missing", e.to_string()))?;
    let (mut jobs, mut errors, mut ids) = (0u64, Vec::new(), HashSet::new());
    loop {
        let entry = match reader.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(e) => return Err(one("input_file_unreadable", format!("cannot read the input file: {e}"))),
        };
        let error = match entry {
            Entry::Job(job) if job.endpoint.path() == endpoint && ids.insert(job.id.clone()) => {
                jobs += 1;
                continue;
            }
            Entry::Job(job) if job.endpoint.path() == endpoint => BatchError {
                code: "duplicate_custom_id".into(),
                message: format!(
                    "the custom_id {:?} is a duplicate of another request's: each request of a batch needs its own",
                    job.id
                ),
                param: Some("custom_id".into()),
                line: Some(job.line),
            },
            Entry::Job(job) => BatchError {
                code: "mismatched_endpoint".into(),
                message: format!("this line goes to {}, the batch's endpoint is {endpoint}", job.endpoint.path()),
                param: Some("url".into()),
                line: Some(job.line),
            },
            Entry::Bad(bad) => {
                BatchError { code: bad.code.to_string(), message: bad.message, param: None, line: Some(bad.line) }
            }
        };
        if errors.len() < MAX_ERRORS {
            errors.push(error);
        }
    }
    match (jobs, errors.is_empty()) {
        (_, false) => Err(errors),
        (0, true) => Err(one("empty_file", "the input file holds no request".into())),
        (n, true) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::RequestDefaults;

    fn check(lines: &str, endpoint: &str) -> Result<u64, Vec<BatchError>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, lines).unwrap();
        validate(&path, endpoint, &Parser::new(RequestDefaults::default(), None), 1 << 20)
    }

    #[test]
    fn bad_lines_and_other_endpoints_fail_the_batch_by_line() {
        let chat = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"hi"}]}}"#;
        let emb = r#"{"custom_id":"b","method":"POST","url":"/v1/embeddings","body":{"input":"x"}}"#;
        let nope = r#"{"custom_id":"c","method":"POST","url":"/v1/images","body":{}}"#;
        let chat2 = chat.replace(r#""custom_id":"a""#, r#""custom_id":"a2""#);
        assert_eq!(check(&format!("{chat}\n{chat2}\n"), "/v1/chat/completions"), Ok(2));
        let errors = check(&format!("{chat}\nnot json\n{emb}\n{nope}\n"), "/v1/chat/completions").unwrap_err();
        let got: Vec<(&str, Option<u64>)> = errors.iter().map(|e| (e.code.as_str(), e.line)).collect();
        assert_eq!(got, [("invalid_json", Some(2)), ("mismatched_endpoint", Some(3)), ("bad_url", Some(4))]);
        assert_eq!(check("", "/v1/embeddings").unwrap_err()[0].code, "empty_file");
    }

    #[test]
    fn a_custom_id_used_twice_fails_the_batch_at_the_later_line() {
        let line = |id: &str| {
            format!(r#"{{"custom_id":"{id}","method":"POST","url":"/v1/embeddings","body":{{"input":"x"}}}}"#)
        };
        let lines = [line("a"), line("b"), line("a"), line("c")].join("\n");
        let errors = check(&lines, "/v1/embeddings").unwrap_err();
        let got: Vec<(&str, Option<u64>, Option<&str>)> =
            errors.iter().map(|e| (e.code.as_str(), e.line, e.param.as_deref())).collect();
        assert_eq!(got, [("duplicate_custom_id", Some(3), Some("custom_id"))]);
        assert!(errors[0].message.contains("\"a\""), "{}", errors[0].message);
    }
}
