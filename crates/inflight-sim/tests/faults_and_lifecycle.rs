//! Fault injection, queue bounds and server restarts, seen from a client.

use std::time::Duration;

use inflight_sim::{Api, Faults, Profile, SimConfig, SimServer};
use serde_json::json;

fn chat_body(tag: &str) -> serde_json::Value {
    json!({"model": "m", "messages": [{"role": "user", "content": tag}]})
}

/// A server where every request's first attempt gets `faults` and the second succeeds.
async fn faulty(faults: Faults) -> SimServer {
    let faults = Faults { max_per_request: 1, ..faults };
    let cfg = SimConfig::zero_latency().with_faults(faults).with_stall_for(Duration::from_secs(60));
    SimServer::start(cfg).await.unwrap()
}

async fn send(client: &reqwest::Client, server: &SimServer, tag: &str) -> reqwest::Result<reqwest::Response> {
    client.post(format!("{}/v1/chat/completions", server.url())).json(&chat_body(tag)).send().await
}

#[tokio::test]
async fn http_error_faults_then_success() {
    let client = reqwest::Client::new();
    let server = faulty(Faults { error_500: 1.0, ..Faults::default() }).await;
    let first = send(&client, &server, "a").await.unwrap();
    assert_eq!(first.status().as_u16(), 500);
    let body: serde_json::Value = first.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
    assert_eq!(send(&client, &server, "a").await.unwrap().status().as_u16(), 200);
    assert_eq!((server.stats().error_500, server.stats().ok), (1, 1));
    server.shutdown().await;

    let server = faulty(Faults { error_503_retry_after: 1.0, ..Faults::default() }).await;
    let first = send(&client, &server, "a").await.unwrap();
    assert_eq!(first.status().as_u16(), 503);
    assert_eq!(first.headers()["retry-after"], "1");
    assert_eq!(send(&client, &server, "a").await.unwrap().status().as_u16(), 200);
    assert_eq!(server.stats().error_503_retry_after, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn reset_fault_drops_the_connection_without_a_response() {
    let client = reqwest::Client::new();
    let server = faulty(Faults { reset: 1.0, ..Faults::default() }).await;
    let err = send(&client, &server, "a").await.expect_err("connection must be reset");
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    assert_eq!(send(&client, &server, "a").await.unwrap().status().as_u16(), 200);
    assert_eq!(server.stats().reset, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn truncated_fault_sends_an_incomplete_body() {
    let client = reqwest::Client::new();
    let server = faulty(Faults { truncated: 1.0, ..Faults::default() }).await;
    let first = send(&client, &server, "a").await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let promised = first.content_length().expect("content-length");
    match first.bytes().await {
        Err(e) => assert!(e.is_body() || e.is_decode(), "{e:?}"),
        Ok(b) => panic!("got {} of {promised} bytes without an error", b.len()),
    }
    let second = send(&client, &server, "a").await.unwrap();
    assert!(second.json::<serde_json::Value>().await.is_ok());
    assert_eq!(server.stats().truncated, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn stall_fault_holds_the_request_past_the_client_timeout() {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let server = faulty(Faults { stall: 1.0, ..Faults::default() }).await;
    let err = send(&client, &server, "a").await.expect_err("must time out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(send(&client, &server, "a").await.unwrap().status().as_u16(), 200);
    assert_eq!(server.stats().stall, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_queue_answers_503_with_retry_after() {
    // Slow time so all requests are pending together: a round takes ~0.5 s.
    let cfg = SimConfig::profile(Profile::BoundedQueue).with_time_scale(0.25);
    let server = SimServer::start(cfg).await.unwrap();
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (client, url) = (client.clone(), format!("{}/v1/chat/completions", server.url()));
        tasks.spawn(async move {
            let resp = client.post(url).json(&chat_body(&format!("{i}"))).send().await.unwrap();
            let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (resp.status().as_u16(), retry)
        });
    }
    let results = tasks.join_all().await;
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!busy.is_empty(), "{results:?}");
    assert!(busy.iter().all(|(_, r)| r.as_deref() == Some("1")));
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 503), "{results:?}");
    let stats = server.stats();
    assert_eq!(stats.busy_503 as usize, busy.len());
    assert_eq!(stats.ok as usize, 30 - busy.len());
    assert!(stats.ok >= 20 && stats.max_in_flight >= 20, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_resets_open_connections_and_the_port_can_be_reused() {
    // Slow enough that the streamed answer is still running at shutdown.
    let cfg = SimConfig::profile(Profile::Serial).with_time_scale(0.05).with_api(Api::Ollama);
    let server = SimServer::start(cfg.clone()).await.unwrap();
    let port = server.addr().port();
    let url = format!("{}/api/generate", server.url());
    let body = json!({"model": "sim-model", "prompt": "tell me a story"});
    let mut resp = reqwest::Client::new().post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    server.shutdown().await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match resp.chunk().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the open stream must end promptly");
    assert!(outcome.is_err(), "stream ended cleanly instead of being cut");
    let refused = reqwest::Client::new().post(&url).json(&body).send().await;
    assert!(refused.is_err_and(|e| e.is_connect()));

    let server = SimServer::start(cfg.with_port(port).with_time_scale(100.0)).await.unwrap();
    assert_eq!(server.addr().port(), port);
    let mut fast = body.clone();
    fast["stream"] = false.into();
    fast["options"] = json!({"num_predict": 2});
    let resp = reqwest::Client::new().post(&url).json(&fast).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn one_process_runs_several_servers_each_with_its_own_state() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inflight-sim"))
        .args(["--zero-latency", "--servers", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let urls: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    let distinct: std::collections::HashSet<&String> = urls.iter().collect();
    assert_eq!(distinct.len(), 3, "three ports: {urls:?}");
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r = client.post(format!("{}/v1/chat/completions", urls[0])).json(&chat_body("a")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let r = client.post(format!("{}/v1/chat/completions", urls[2])).json(&chat_body("b")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let requests = |url: &str| {
        let url = format!("{url}/sim/stats");
        async move { reqwest::get(url).await.unwrap().json::<serde_json::Value>().await.unwrap()["requests"].clone() }
    };
    assert_eq!(
        (requests(&urls[0]).await, requests(&urls[1]).await, requests(&urls[2]).await),
        (json!(2), json!(0), json!(1))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
