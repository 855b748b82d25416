//! A 10,000-line file with 100 bad lines of assorted kinds: 9,900 results, 100 error records with the right
//! line numbers and codes, exit code 1.

use std::collections::BTreeMap;
use std::io::Write;

use inflight_sim::SimConfig;
use serde_json::json;

use crate::util::*;

#[test]
fn bad_lines_become_error_records_and_never_stop_the_run() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let input = s.path("jobs.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let mut expected: BTreeMap<u64, &str> = BTreeMap::new();
    for line in 1..=10_000u64 {
        let good = json!({"id": format!("j{line}"), "prompt": format!("p{line}")}).to_string().into_bytes();
        let bytes: Vec<u8> = if line % 100 == 50 {
            let (code, bytes): (&str, Vec<u8>) = match (line / 100) % 8 {
                0 => ("invalid_json", b"{\"id\": \"x\", \"prompt\": ".to_vec()),
                1 => ("invalid_utf8", b"{\"prompt\": \"\xff\xfe\"}".to_vec()),
                2 => ("missing_field", json!({"id": format!("m{line}"), "text": "no prompt"}).to_string().into_bytes()),
                3 => ("duplicate_id", json!({"id": "j1", "prompt": "again"}).to_string().into_bytes()),
                4 => ("line_too_long", json!({"prompt": "x".repeat(5000)}).to_string().into_bytes()),
                5 => ("not_an_object", b"[1, 2, 3]".to_vec()),
                6 => (
                    "bad_url",
                    json!({"custom_id": format!("u{line}"), "url": "/v1/nope", "body": {}}).to_string().into_bytes(),
                ),
                _ => ("bad_field", json!({"id": format!("f{line}"), "prompt": 42}).to_string().into_bytes()),
            };
            expected.insert(line, code);
            bytes
        } else {
            good
        };
        f.write_all(&bytes).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);

    let out = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        s.out_arg(),
        "--server",
        sim.url(),
        "-q",
        "--max-line-bytes",
        "4096",
        "-c",
        "32",
    ]);
    assert_exit(&out, 1);
    assert_eq!(read_jsonl(&s.out()).len(), 9_900);
    let errors = read_jsonl(&s.errors());
    assert_eq!(errors.len(), 100);
    let got: BTreeMap<u64, String> =
        errors.iter().map(|e| (e["line"].as_u64().unwrap(), e["error"]["code"].as_str().unwrap().to_owned())).collect();
    let want: BTreeMap<u64, String> = expected.iter().map(|(l, c)| (*l, c.to_string())).collect();
    assert_eq!(got, want);
    assert!(errors.iter().all(|e| is_bad_line(e) && !e["error"]["message"].as_str().unwrap().is_empty()));
    // A line with a readable id keeps it in its record; the others (unparsable, too long, not an object) cannot.
    for e in &errors {
        let line = e["line"].as_u64().unwrap();
        let want = match expected[&line] {
            "duplicate_id" => Some("j1".to_owned()),
            "missing_field" => Some(format!("m{line}")),
            "bad_url" => Some(format!("u{line}")),
            "bad_field" => Some(format!("f{line}")),
            _ => None,
        };
        assert_eq!(e["custom_id"].as_str().map(str::to_owned), want, "{e}");
    }
    let ids = id_counts(&s.out(), &s.errors());
    assert_eq!(ids.len(), 9_900);
    assert!(ids.values().all(|&n| n == 1));
}

#[test]
fn a_body_its_url_cannot_take_is_a_numbered_bad_line_that_is_never_sent() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let chat = |id: Option<&str>, body: serde_json::Value| {
        let mut line = json!({"method": "POST", "url": "/v1/chat/completions", "body": body});
        if let Some(id) = id {
            line["custom_id"] = json!(id);
        }
        line.to_string()
    };
    let good = json!({"messages": [{"role": "user", "content": "hi"}]});
    let input = s.write_lines(
        "jobs.jsonl",
        [
            chat(Some("ok1"), good.clone()),
            chat(Some("bad1"), json!({"messages": "not a list"})),
            json!({"custom_id": "bad2", "url": "/v1/embeddings", "body": {"input": []}}).to_string(),
            json!({"custom_id": "bad3", "url": "/v1/completions", "body": {"prompt": "x", "stream": "yes"}})
                .to_string(),
            chat(None, good.clone()),
            chat(Some("ok1"), good),
            json!({"prompt": "fine", "max_tokens": 4}).to_string(),
        ],
    );
    let out = run(&["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q"]);
    assert_exit(&out, 1);
    let mut done: Vec<String> =
        read_jsonl(&s.out()).iter().map(|v| v["custom_id"].as_str().unwrap().to_owned()).collect();
    done.sort();
    assert_eq!(done, ["7", "ok1"], "the line-number id stays for a simple line");
    assert_eq!(sim.stats().requests, 2, "no bad line reached the server");
    let got: Vec<(u64, String, Option<String>)> = read_jsonl(&s.errors())
        .iter()
        .map(|e| {
            assert!(is_bad_line(e), "{e}");
            let custom_id = e["custom_id"].as_str().map(str::to_owned);
            (e["line"].as_u64().unwrap(), e["error"]["code"].as_str().unwrap().to_owned(), custom_id)
        })
        .collect();
    let want = [
        (2, "bad_field", Some("bad1")),
        (3, "bad_field", Some("bad2")),
        (4, "bad_field", Some("bad3")),
        (5, "missing_field", None),
        (6, "duplicate_id", Some("ok1")),
    ];
    let want: Vec<(u64, String, Option<String>)> =
        want.iter().map(|(l, c, id)| (*l, c.to_string(), id.map(str::to_owned))).collect();
    assert_eq!(got, want);
    let messages: Vec<String> =
        read_jsonl(&s.errors()).iter().map(|e| e["error"]["message"].as_str().unwrap().to_owned()).collect();
    assert!(messages[0].contains("\"messages\" must be"), "{messages:?}");
    assert!(messages[2].contains("\"stream\" must be a boolean"), "{messages:?}");
    assert!(messages[3].contains("custom_id"), "{messages:?}");
}
