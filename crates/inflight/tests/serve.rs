//! `inflight serve` against the simulator: a batch from upload to download, FIFO, cancel, invalid input files,
//! API keys, kill -9 and resume, `/metrics`, and `run --metrics-listen`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use inflight_sim::{Profile, SimConfig};
use serde_json::json;

use crate::serve_util::*;
use crate::util::*;

fn lanes4() -> SimConfig {
    SimConfig::profile(Profile::Lanes4)
}

#[test]
fn a_batch_runs_to_completed_with_every_custom_id_once_and_metrics_that_match() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let serve = Serve::start(&s.path("data"), &["--server", sim.url()]);
    let api = Client::new(&serve, None);
    let batch = api.batch_of(&batch_lines(120, Some(8)));
    assert_eq!(batch["status"], "validating");
    assert_eq!(batch["object"], "batch");
    let id = batch["id"].as_str().unwrap();
    assert!(id.starts_with("batch_"), "{id}");
    let done = api.poll(id, 60, |b| b["status"] == "completed");
    assert_eq!(done["request_counts"], json!({"total": 120, "completed": 120, "failed": 0}));
    assert!(done["error_file_id"].is_null(), "{done}");
    for t in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[t].as_i64().unwrap() >= done["created_at"].as_i64().unwrap(), "{t}: {done}");
    }
    let lines = api.lines(&done["output_file_id"]);
    let ids = custom_ids(&lines);
    assert_eq!(ids.len(), 120);
    assert!(ids.values().all(|&n| n == 1), "{ids:?}");
    assert!(lines.iter().all(|l| l["response"]["status_code"] == 200 && l["error"].is_null()));
    let file = api.get(&format!("/v1/files/{}", done["output_file_id"].as_str().unwrap())).json();
    assert_eq!(file["purpose"], "batch_output");
    let input = done["input_file_id"].as_str().unwrap();
    let deleted = api.delete(&format!("/v1/files/{input}")).json();
    assert_eq!(deleted, json!({"id": input, "object": "file", "deleted": true}));
    assert_eq!(api.get(&format!("/v1/files/{input}")).status, 404);
    let listed = api.get("/v1/files").json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "only the output is left: {listed}");

    let samples = parse_prometheus(&api.get("/metrics").text());
    assert_eq!(metric(&samples, "inflight_jobs_total", &[("status", "done")]), 120.0);
    assert_eq!(metric(&samples, "inflight_jobs_total", &[("status", "failed")]), 0.0);
    let tokens: u64 = lines.iter().map(|l| l["response"]["body"]["usage"]["completion_tokens"].as_u64().unwrap()).sum();
    assert_eq!(metric(&samples, "inflight_output_tokens_total", &[]), tokens as f64);
    assert_eq!(done["usage"]["output_tokens"], tokens);
    let input = done["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input > 0 && done["usage"]["total_tokens"] == input + tokens, "{}", done["usage"]);
    assert_eq!(metric(&samples, "inflight_request_duration_seconds_count", &[]), 120.0);
    assert_eq!(metric(&samples, "inflight_in_flight", &[("server", sim.url())]), 0.0);
    assert!(metric(&samples, "inflight_concurrency_limit", &[("server", sim.url())]) >= 1.0);
    assert_eq!(metric(&samples, "inflight_batches", &[("status", "completed")]), 1.0);
    assert_eq!(sim.stats().requests, 120, "each job was sent once");
}

#[test]
fn batches_run_first_in_first_out_and_list_newest_first_by_pages() {
    let sim = Sim::start(lanes4());
    let s = Scratch::new();
    let serve = Serve::start(&s.path("data"), &["--server", sim.url()]);
    let api = Client::new(&serve, None);
    let ids: Vec<String> =
        (0..3).map(|_| api.batch_of(&batch_lines(30, Some(4)))["id"].as_str().unwrap().to_owned()).collect();
    let mut seen_running = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // One list request is one snapshot (three GETs one after another could see batch 2 still running and,
        // a moment later, batch 3 already running).
        let listed = api.get("/v1/batches?limit=10").json();
        let status_of = |id: &str| -> String {
            let batch = listed["data"].as_array().unwrap().iter().find(|b| b["id"] == id).expect("listed");
            batch["status"].as_str().unwrap().to_owned()
        };
        let statuses: Vec<String> = ids.iter().map(|id| status_of(id)).collect();
        let running: Vec<usize> = (0..3).filter(|&i| statuses[i] == "in_progress").collect();
        assert!(running.len() <= 1, "one batch at a time: {statuses:?}");
        for (i, st) in statuses.iter().enumerate() {
            if st == "completed" {
                assert!(statuses[..i].iter().all(|s| s == "completed"), "out of order: {statuses:?}");
            }
        }
        if let Some(&i) = running.first() {
            if seen_running.last() != Some(&i) {
                seen_running.push(i);
            }
        }
        if statuses.iter().all(|s| s == "completed") {
            break;
        }
        assert!(Instant::now() < deadline, "{statuses:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(seen_running.windows(2).all(|w| w[0] < w[1]), "{seen_running:?}");
    let page = api.get("/v1/batches?limit=2").json();
    let got: Vec<&str> = page["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(page["has_more"], true);
    let next = api.get(&format!("/v1/batches?limit=2&after={}", page["last_id"].as_str().unwrap())).json();
    assert_eq!(next["data"][0]["id"], ids[0].as_str());
    assert_eq!(next["has_more"], false);
    assert_eq!(api.get("/v1/batches?limit=0").status, 400);
}

#[test]
fn cancel_mid_batch_is_cancelling_then_cancelled_with_the_partial_output() {
    let sim = Sim::start(lanes4());
    let s = Scratch::new();
    let serve = Serve::start(&s.path("data"), &["--server", sim.url(), "-c", "4"]);
    let api = Client::new(&serve, None);
    let batch = api.batch_of(&batch_lines(400, None));
    let id = batch["id"].as_str().unwrap();
    api.poll(id, 60, |b| b["request_counts"]["completed"].as_u64().unwrap() >= 10);
    let cancelling = api.post(&format!("/v1/batches/{id}/cancel"), json!({}));
    assert_eq!(cancelling.status, 200, "{}", cancelling.text());
    assert_eq!(cancelling.json()["status"], "cancelling");
    assert!(cancelling.json()["cancelling_at"].is_i64());
    let done = api.poll(id, 60, |b| b["status"] != "cancelling");
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["cancelled_at"].is_i64());
    let lines = api.lines(&done["output_file_id"]);
    let ids = custom_ids(&lines);
    assert!(!ids.is_empty() && ids.len() < 400, "a partial output: {}", ids.len());
    assert!(ids.values().all(|&n| n == 1));
    assert_eq!(done["request_counts"]["completed"].as_u64().unwrap(), lines.len() as u64);
    assert_eq!(done["request_counts"]["total"], 400);
    let again = api.post(&format!("/v1/batches/{id}/cancel"), json!({}));
    assert_eq!(again.status, 409, "a cancelled batch cannot be cancelled again");
    // A queued batch is cancelled at once and never sent.
    let sent = sim.stats().requests;
    let first = api.batch_of(&batch_lines(200, None));
    let queued = api.batch_of(&batch_lines(5, None));
    let c = api.post(&format!("/v1/batches/{}/cancel", queued["id"].as_str().unwrap()), json!({})).json();
    assert_eq!(c["status"], "cancelled", "{c}");
    api.post(&format!("/v1/batches/{}/cancel", first["id"].as_str().unwrap()), json!({}));
    api.poll(first["id"].as_str().unwrap(), 60, |b| b["status"] == "cancelled");
    assert!(sim.stats().requests - sent < 200, "the cancelled batches stopped");
}

#[test]
fn an_invalid_input_file_fails_the_batch_with_errors_by_line_and_sends_nothing() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let serve = Serve::start(&s.path("data"), &["--server", sim.url()]);
    let api = Client::new(&serve, None);
    let mut lines = batch_lines(3, Some(4));
    lines[1] = "{\"custom_id\": \"r1\", oops".into();
    lines.push(json!({"custom_id": "r9", "method": "POST", "url": "/v1/images/generations", "body": {}}).to_string());
    let batch = api.batch_of(&lines);
    let failed = api.poll(batch["id"].as_str().unwrap(), 30, |b| b["status"] != "validating");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["failed_at"].is_i64());
    let errors: Vec<(String, u64)> = failed["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap().to_owned(), e["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(errors, [("invalid_json".to_owned(), 2), ("bad_url".to_owned(), 4)]);
    assert_eq!(failed["errors"]["object"], "list");
    assert_eq!(sim.stats().requests, 0, "nothing of a refused file is sent");
    // Refused at creation: an endpoint inflight does not serve, a file that is not there.
    let file = api.upload("x.jsonl", "batch", b"{}\n").json();
    let bad = api.post(
        "/v1/batches",
        json!({"input_file_id": file["id"], "endpoint": "/v1/responses", "completion_window": "24h"}),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "endpoint");
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
    let missing = api.post(
        "/v1/batches",
        json!({"input_file_id": "file-000000000000000000000000", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    );
    assert_eq!(missing.status, 400);
    assert_eq!(api.upload("x.jsonl", "fine-tune", b"{}\n").status, 400, "only purpose batch");
}

/// A server with two keys, `sk-a` and `sk-b`.
fn keyed(s: &Scratch, sim: &Sim) -> Serve {
    let keys = s.path("keys");
    std::fs::write(&keys, "sk-a\nsk-b\n").unwrap();
    Serve::start(&s.path("data"), &["--server", sim.url(), "--api-keys", keys.to_str().unwrap()])
}

/// What a key sees: its files and batches.
fn holdings(api: &Client) -> (usize, usize) {
    let files = api.get("/v1/files").json()["data"].as_array().unwrap().len();
    let batches = api.get("/v1/batches").json()["data"].as_array().unwrap().len();
    (files, batches)
}

fn assert_401(a: &Answer, code: &str) {
    assert_eq!(a.status, 401, "{}", a.text());
    let e = &a.json()["error"];
    assert_eq!(e["code"], code);
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e["message"].is_string());
}

#[test]
fn auth_a_request_without_a_key_gets_401_and_changes_nothing() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let serve = keyed(&s, &sim);
    let a = Client::new(&serve, Some("sk-a"));
    let batch = a.batch_of(&batch_lines(2, Some(2)));
    a.poll(batch["id"].as_str().unwrap(), 30, |b| b["status"] == "completed");
    let before = holdings(&a);
    let anon = Client::new(&serve, None);
    assert_401(&anon.upload("j.jsonl", "batch", b"{}\n"), "missing_api_key");
    assert_401(&anon.get("/v1/batches"), "missing_api_key");
    assert_401(&anon.delete(&format!("/v1/files/{}", batch["input_file_id"].as_str().unwrap())), "missing_api_key");
    assert_eq!(holdings(&a), before, "nothing changed");
    assert_eq!(dir_listing(&s.path("data/files")).len(), 2, "the input and the output, nothing uploaded");
}

#[test]
fn auth_a_wrong_key_gets_401_and_changes_nothing() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let serve = keyed(&s, &sim);
    let a = Client::new(&serve, Some("sk-a"));
    let file = a.upload("j.jsonl", "batch", (batch_lines(2, Some(2)).join("\n") + "\n").as_bytes()).json();
    let wrong = Client::new(&serve, Some("sk-wrong"));
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    assert_401(&wrong.post("/v1/batches", create), "invalid_api_key");
    assert_401(&wrong.upload("j.jsonl", "batch", b"{}\n"), "invalid_api_key");
    assert_401(&wrong.get(&format!("/v1/files/{}/content", file["id"].as_str().unwrap())), "invalid_api_key");
    assert_eq!(holdings(&a), (1, 0), "no batch made, no file added");
    assert_eq!(sim.stats().requests, 0);
}

#[test]
fn auth_another_keys_batch_and_files_are_404_and_untouched() {
    let sim = Sim::start(lanes4());
    let s = Scratch::new();
    let serve = keyed(&s, &sim);
    let (a, b) = (Client::new(&serve, Some("sk-a")), Client::new(&serve, Some("sk-b")));
    let batch = a.batch_of(&batch_lines(100, None));
    let id = batch["id"].as_str().unwrap();
    let file = batch["input_file_id"].as_str().unwrap();
    for answer in [
        b.get(&format!("/v1/batches/{id}")),
        b.post(&format!("/v1/batches/{id}/cancel"), json!({})),
        b.get(&format!("/v1/files/{file}")),
        b.get(&format!("/v1/files/{file}/content")),
        b.delete(&format!("/v1/files/{file}")),
    ] {
        assert_eq!(answer.status, 404, "{}", answer.text());
        assert_eq!(answer.json()["error"]["code"], "not_found");
    }
    assert_eq!(holdings(&b), (0, 0), "b sees nothing of a's");
    let create = json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    assert_eq!(b.post("/v1/batches", create).status, 400, "a's file is no file for b");
    let done = a.poll(id, 60, |x| x["status"] == "completed");
    assert!(done["cancelling_at"].is_null(), "b's cancel changed nothing: {done}");
    assert_eq!(a.get(&format!("/v1/files/{file}")).status, 200, "b's delete changed nothing");
}

#[test]
fn keys_appear_nowhere_serve_writes_at_any_verbosity() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let keys = s.path("keys");
    std::fs::write(&keys, "sk-secret-71c2\n").unwrap();
    let data = s.path("data");
    let mut serve = Serve::start(&data, &["--server", sim.url(), "--api-keys", keys.to_str().unwrap(), "-vv"]);
    let api = Client::new(&serve, Some("sk-secret-71c2"));
    let batch = api.batch_of(&batch_lines(5, Some(2)));
    api.poll(batch["id"].as_str().unwrap(), 30, |b| b["status"] == "completed");
    assert_eq!(Client::new(&serve, Some("sk-wrong-9f3e")).get("/v1/batches").status, 401);
    let board = api.get("/dashboard.json").text();
    serve.terminate();
    let mut texts = vec![serve.stderr(), board];
    let mut dirs = vec![data];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                texts.push(String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned());
            }
        }
    }
    assert!(texts.len() > 5, "the data directory was read");
    for key in ["sk-secret-71c2", "sk-wrong-9f3e"] {
        assert!(texts.iter().all(|t| !t.contains(key)), "{key} leaked");
    }
}

#[test]
fn an_upload_over_the_limit_is_413_and_no_partial_upload_is_kept() {
    let s = Scratch::new();
    let data = s.path("data");
    // What a serve killed in the middle of an upload left is removed at the next start.
    std::fs::create_dir_all(data.join("files")).unwrap();
    std::fs::write(data.join("files/.upload-file-0123"), "partial").unwrap();
    let serve = Serve::start(&data, &["--server", "http://127.0.0.1:9", "--max-upload", "1K"]);
    assert!(dir_listing(&data.join("files")).is_empty(), "a partial upload is removed at start");
    let api = Client::new(&serve, None);
    let big = api.upload("big.jsonl", "batch", &[b'x'; 4096]);
    assert_eq!(big.status, 413, "{}", big.text());
    assert_eq!(big.json()["error"]["param"], "file");
    assert!(dir_listing(&data.join("files")).is_empty(), "no partial upload kept");
    assert_eq!(api.upload("small.jsonl", "batch", &[b'x'; 1000]).status, 200);
    assert_eq!(dir_listing(&data.join("files")).len(), 1);
}

#[test]
fn a_duplicate_custom_id_fails_validation_at_its_line_and_nothing_is_sent() {
    let sim = Sim::start(SimConfig::zero_latency());
    let s = Scratch::new();
    let serve = Serve::start(&s.path("data"), &["--server", sim.url()]);
    let api = Client::new(&serve, None);
    let mut lines = batch_lines(3, Some(2));
    lines.push(lines[0].clone());
    let batch = api.batch_of(&lines);
    let done = api.poll(batch["id"].as_str().unwrap(), 30, |b| b["status"].as_str().unwrap().ends_with("ed"));
    assert_eq!(done["status"], "failed", "{done}");
    let errors = done["errors"]["data"].as_array().expect("errors.data");
    assert_eq!(errors.len(), 1, "{done}");
    assert_eq!((errors[0]["code"].as_str(), errors[0]["line"].as_u64()), (Some("duplicate_custom_id"), Some(4)));
    assert_eq!(errors[0]["param"], "custom_id");
    assert_eq!(sim.stats().requests, 0, "nothing sent");
}

#[test]
fn sigterm_drains_the_running_batch_which_goes_on_at_the_next_start() {
    let sim = Sim::start(lanes4());
    let s = Scratch::new();
    let data = s.path("data");
    let mut serve = Serve::start(&data, &["--server", sim.url(), "-c", "4"]);
    let api = Client::new(&serve, None);
    let id = api.batch_of(&batch_lines(300, None))["id"].as_str().unwrap().to_owned();
    api.poll(&id, 60, |b| b["request_counts"]["completed"].as_u64().unwrap() >= 20);
    assert_eq!(serve.terminate(), Some(130));
    let serve = Serve::start(&data, &["--server", sim.url(), "-c", "4"]);
    let api = Client::new(&serve, None);
    let again = api.get(&format!("/v1/batches/{id}")).json();
    assert!(["in_progress", "completed"].contains(&again["status"].as_str().unwrap()), "{again}");
    let done = api.poll(&id, 120, |b| b["status"] == "completed");
    assert_eq!(done["request_counts"], json!({"total": 300, "completed": 300, "failed": 0}));
    let ids = custom_ids(&api.lines(&done["output_file_id"]));
    assert!(ids.len() == 300 && ids.values().all(|&n| n == 1));
}

#[test]
fn without_keys_only_loopback_is_served() {
    let s = Scratch::new();
    let out = run(&["serve", "--listen", "0.0.0.0:0", "--data", s.path("data").to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-keys"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!s.path("data").exists(), "nothing made");
}

#[test]
fn a_second_serve_on_the_same_data_directory_is_refused() {
    let s = Scratch::new();
    let data = s.path("data");
    let _first = Serve::start(&data, &["--server", "http://127.0.0.1:9"]);
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()]);
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another inflight serve is using the data directory"), "{err}");
}

#[test]
fn kill_9_mid_batch_then_restart_completes_every_custom_id_exactly_once() {
    let sim = Sim::start(lanes4());
    let s = Scratch::new();
    let data = s.path("data");
    let mut serve = Serve::start(&data, &["--server", sim.url(), "-c", "4"]);
    let api = Client::new(&serve, None);
    let batch = api.batch_of(&batch_lines(300, None));
    let id = batch["id"].as_str().unwrap().to_owned();
    let second = api.batch_of(&batch_lines(20, Some(4)))["id"].as_str().unwrap().to_owned();
    let mid = api.poll(&id, 60, |b| b["request_counts"]["completed"].as_u64().unwrap() >= 30);
    assert_eq!(mid["status"], "in_progress");
    serve.kill_9();
    let serve = Serve::start(&data, &["--server", sim.url(), "-c", "4"]);
    let api = Client::new(&serve, None);
    let done = api.poll(&id, 120, |b| b["status"] == "completed");
    assert_eq!(done["request_counts"], json!({"total": 300, "completed": 300, "failed": 0}));
    let ids = custom_ids(&api.lines(&done["output_file_id"]));
    assert_eq!(ids.len(), 300);
    assert!(ids.values().all(|&n| n == 1), "duplicated: {:?}", ids.iter().filter(|(_, &n)| n > 1).collect::<Vec<_>>());
    let second = api.poll(&second, 60, |b| b["status"] == "completed");
    assert_eq!(second["request_counts"]["completed"], 20);
}

#[test]
fn run_metrics_listen_serves_the_runs_counters_while_it_goes() {
    let sim = Sim::start(lanes4());
    let s = Scratch::new();
    let input = s.write_lines("jobs.jsonl", prompt_lines(200));
    let mut child = bin()
        .args(["run", input.to_str().unwrap(), "-o", s.out_arg(), "--server", sim.url(), "-q", "-c", "4"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "run ended before saying where its metrics are");
        if let Some(rest) = line.strip_prefix("metrics: ") {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in stderr.lines() {});
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let scrape = || rt.block_on(async { reqwest::get(&url).await.unwrap().text().await.unwrap() });
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let samples = parse_prometheus(&scrape());
        if metric(&samples, "inflight_jobs_total", &[("status", "done")]) >= 20.0 {
            break samples;
        }
        assert!(Instant::now() < deadline, "no progress in the metrics");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(metric(&samples, "inflight_concurrency_limit", &[("server", sim.url())]), 4.0);
    assert!(metric(&samples, "inflight_in_flight", &[("server", sim.url())]) <= 4.0);
    let done = metric(&samples, "inflight_jobs_total", &[("status", "done")]);
    assert!(metric(&samples, "inflight_request_duration_seconds_count", &[]) == done);
    assert!(done <= lines_in(&s.out()) as f64 + 64.0, "the counter follows the run");
    assert_exit(&child.wait_with_output().unwrap(), 0);
    assert_eq!(read_jsonl(&s.out()).len(), 200);
}

/// The test bed's python with the pinned `openai` SDK (`scripts/testbed.sh sdk`, cached after the first call).
fn sdk_python() -> String {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/testbed.sh");
    let out = std::process::Command::new("bash").arg(script).arg("sdk").output().expect("testbed.sh runs");
    assert!(out.status.success(), "testbed.sh sdk failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs scripts/serve-sdk-test.py (the unmodified SDK: two batches, polled to completed, outputs checked)
/// against `serve`; its summary line.
fn run_sdk_test(serve: &Serve, extra: &[&str]) -> serde_json::Value {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/serve-sdk-test.py");
    let out = std::process::Command::new(sdk_python())
        .arg(script)
        .args(["--base-url", &format!("{}/v1", serve.base)])
        .args(extra)
        .output()
        .expect("python runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "serve-sdk-test.py failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap()
}

#[test]
#[ignore = "needs the openai SDK from the test bed (scripts/testbed.sh sdk); scripts/test.sh runs it"]
fn the_official_openai_sdk_runs_two_batches_on_the_simulator() {
    let sim = Sim::start(lanes4());
    let s = Scratch::new();
    let serve = Serve::start(&s.path("data"), &["--server", sim.url()]);
    let summary = run_sdk_test(&serve, &["--jobs", "200", "--second", "50"]);
    assert_eq!(summary["request_counts"], json!({"total": 200, "completed": 200, "failed": 0}));
    assert_eq!(sim.stats().requests, 250, "every job of both batches sent once");
}

#[test]
#[ignore = "needs the test bed (scripts/testbed.sh); scripts/test.sh runs it"]
fn the_official_openai_sdk_runs_two_batches_on_the_test_bed_llama_server() {
    let server = crate::real_server::LlamaServer::start(&["-np", "4", "-t", "2"]);
    let s = Scratch::new();
    let serve = Serve::start(&s.path("data"), &["--server", &server.url]);
    let summary = run_sdk_test(&serve, &["--jobs", "200", "--second", "20", "--max-tokens", "8"]);
    assert_eq!(summary["request_counts"], json!({"total": 200, "completed": 200, "failed": 0}));
}

/// Headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`); its stdout. Virtual time lets the
/// page's own fetches and timers run before the DOM is taken.
fn chromium(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000", "--window-size=1100,700"])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (scripts/testbed.sh browser installs it)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs chromium (scripts/testbed.sh browser); scripts/test.sh runs it"]
fn the_dashboard_in_headless_chromium_shows_the_running_batchs_progress() {
    let sim = Sim::start(lanes4());
    let s = Scratch::new();
    let serve = Serve::start(&s.path("data"), &["--server", sim.url(), "-c", "4"]);
    let api = Client::new(&serve, None);
    let batch = api.batch_of(&batch_lines(600, None));
    let id = batch["id"].as_str().unwrap();
    api.poll(id, 60, |b| b["request_counts"]["completed"].as_u64().unwrap() >= 20);
    // The rate needs two of the page's one-second samples: look again (bounded) until the row has one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (dom, row) = loop {
        let dom = chromium(&format!("{}/", serve.base), &["--dump-dom"]);
        let row = dom.split(&format!("<tr id=\"{id}\"")).nth(1).unwrap_or_else(|| panic!("no row for {id}:\n{dom}"));
        let row = row[..row.find("</tr>").unwrap()].to_owned();
        if row.contains("jobs/s") || Instant::now() > deadline {
            break (dom, row);
        }
    };
    let row = row.as_str();
    assert!(row.contains("data-status=\"in_progress\""), "{row}");
    let completed: u64 = row.split("data-completed=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
    assert!((20..600).contains(&completed), "the progress of a running batch: {row}");
    assert!(row.contains("data-total=\"600\"") && row.contains("jobs/s"), "{row}");
    assert!(dom.contains(&format!("running: {id}")), "the chart names the running batch");
    let shot = s.path("dashboard.png");
    chromium(&format!("{}/", serve.base), &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    if let Some(dir) = std::env::var_os("INFLIGHT_SCREENSHOTS") {
        std::fs::copy(&shot, std::path::Path::new(&dir).join("serve-dashboard.png")).unwrap();
    }
}

fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}
