//! Helpers for the `serve` tests: the binary started on port 0, a small HTTP client, the Prometheus text
//! parser the metrics are checked with.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

/// A running `inflight serve`.
pub struct Serve {
    pub child: Child,
    pub base: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Serve {
    /// Starts `inflight serve --listen 127.0.0.1:0 --data DATA EXTRA...` and waits for its address.
    pub fn start(data: &Path, extra: &[&str]) -> Serve {
        let mut child = bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let base = loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("serve exited before listening: {:?}", child.wait());
            }
            if let Some(rest) = line.split("APIs at ").nth(1) {
                break rest.split_whitespace().next().unwrap().trim_end_matches("/v1").to_owned();
            }
        };
        // Keep draining stderr so serve never blocks on a full pipe, and keep it for the tests that read it.
        let kept = std::sync::Arc::new(std::sync::Mutex::new(line.clone()));
        let sink = kept.clone();
        std::thread::spawn(move || {
            for l in stderr.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Serve { child, base, stderr: kept }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for it to exit; its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        send_signal(self.child.id(), "TERM");
        self.child.wait().unwrap().code()
    }

    /// Kills it with SIGKILL and waits for it.
    pub fn kill_9(&mut self) {
        send_signal(self.child.id(), "KILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP client with an optional API key.
pub struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// A response: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub fn new(serve: &Serve, key: Option<&str>) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Client { rt, http: reqwest::Client::new(), base: serve.base.clone(), key: key.map(str::to_owned) }
    }

    fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let req = match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        self.rt.block_on(async {
            let r = req.send().await.expect("serve answers");
            Answer { status: r.status().as_u16(), body: r.bytes().await.unwrap().to_vec() }
        })
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
    }

    pub fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.send(self.http.delete(format!("{}{path}", self.base)))
    }

    /// `POST /v1/files` with `content` as the file, multipart by hand.
    pub fn upload(&self, name: &str, purpose: &str, content: &[u8]) -> Answer {
        let boundary = "inflight-test-boundary-7d1e";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let req = self
            .http
            .post(format!("{}/v1/files", self.base))
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body);
        self.send(req)
    }

    /// Uploads `lines` and creates a chat batch of them; the batch.
    pub fn batch_of(&self, lines: &[String]) -> Value {
        let file = self.upload("jobs.jsonl", "batch", (lines.join("\n") + "\n").as_bytes());
        assert_eq!(file.status, 200, "{}", file.text());
        let id = file.json()["id"].as_str().unwrap().to_owned();
        let created = self.post(
            "/v1/batches",
            json!({"input_file_id": id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        );
        assert_eq!(created.status, 200, "{}", created.text());
        created.json()
    }

    /// Polls batch `id` until `done(batch)` (at most `secs` seconds).
    pub fn poll(&self, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let b = self.get(&format!("/v1/batches/{id}")).json();
            if done(&b) {
                return b;
            }
            assert!(Instant::now() < deadline, "batch never got there: {b}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lines of file `id`, parsed.
    pub fn lines(&self, id: &Value) -> Vec<Value> {
        let a = self.get(&format!("/v1/files/{}/content", id.as_str().expect("a file id")));
        assert_eq!(a.status, 200, "{}", a.text());
        a.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// `n` OpenAI Batch chat lines with custom ids `r0..`.
pub fn batch_lines(n: usize, max_tokens: Option<u64>) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": format!("say {i}")}]});
            if let Some(t) = max_tokens {
                body["max_tokens"] = json!(t);
            }
            json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions", "body": body})
                .to_string()
        })
        .collect()
}

/// How often each custom_id appears in `lines`.
pub fn custom_ids(lines: &[Value]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in lines {
        *m.entry(l["custom_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    m
}

/// A sample of a Prometheus text document: name, labels, value.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text format strictly: every sample belongs to a family declared by `# TYPE` before
/// it (histograms' `_bucket`, `_sum`, `_count`), names and labels are well formed, label values are quoted
/// with the format's escapes, values are numbers; histogram buckets are cumulative and end in `+Inf` equal to
/// `_count`. Panics on anything else.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(name_ok(name), "bad name in {line:?}");
            match kind {
                "TYPE" => {
                    assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg), "{line:?}");
                    assert!(types.insert(name.to_owned(), arg.to_owned()).is_none(), "TYPE twice: {line:?}");
                }
                "HELP" => {}
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "blank line in the exposition");
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value: {line:?}"),
        };
        assert!(name_ok(name), "bad name {name:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line:?}");
        let mut labels = Vec::new();
        let mut rest = rest;
        if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').unwrap_or_else(|| panic!("label without '=': {line:?}"));
                let key = &r[..eq];
                assert!(name_ok(key), "bad label name in {line:?}");
                let mut chars = r[eq + 1..].char_indices();
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "unquoted label value: {line:?}");
                let (mut value, mut end) = (String::new(), None);
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        '"' => {
                            end = Some(eq + 1 + i + 1);
                            break;
                        }
                        '\n' => panic!("raw newline in {line:?}"),
                        c => value.push(c),
                    }
                }
                let end = end.unwrap_or_else(|| panic!("unterminated label value: {line:?}"));
                labels.push((key.to_owned(), value));
                r = &r[end..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
            rest = r;
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before the value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = samples.iter().filter(|s| s.name == format!("{family}_bucket")).collect();
        assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value), "{family} buckets are not cumulative");
        let last = buckets.last().unwrap_or_else(|| panic!("{family} has no buckets"));
        assert_eq!(last.labels, [("le".to_owned(), "+Inf".to_owned())], "{family}'s last bucket is not +Inf");
        let count = samples.iter().find(|s| s.name == format!("{family}_count")).expect("a _count");
        assert_eq!(last.value, count.value, "{family}: +Inf bucket != _count");
    }
    samples
}

/// The value of `name` with exactly `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
        .value
}
