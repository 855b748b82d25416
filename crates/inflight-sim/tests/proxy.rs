//! The fault proxy in front of the simulator: each kind of fault as a client sees it, and clean forwarding.

use std::time::Duration;

use inflight_sim::{FaultProxy, ProxyConfig, ProxyFault, SimConfig, SimServer};
use serde_json::json;

/// What a client got for one request through the proxy.
#[derive(Debug)]
enum Seen {
    /// Status, Retry-After, and the body if it was read whole.
    Answer { status: u16, retry_after: Option<String>, body: Result<Vec<u8>, String> },
    /// No answer: the request itself failed.
    Failed { timeout: bool },
}

/// A proxy where every attempt draws `kind`, in front of a zero-latency simulator.
async fn proxy_with(kind: ProxyFault, tweak: impl FnOnce(&mut ProxyConfig)) -> (SimServer, FaultProxy) {
    let sim = SimServer::start(SimConfig::zero_latency()).await.unwrap();
    let mut cfg = ProxyConfig::new(sim.url()).with_rate(kind, 1.0);
    cfg.stall_for = Duration::from_secs(30);
    cfg.drip_every = Duration::from_millis(200);
    tweak(&mut cfg);
    (sim, FaultProxy::start(cfg).await.unwrap())
}

async fn send(proxy: &FaultProxy, tag: &str, timeout: Duration) -> Seen {
    let client = reqwest::Client::builder().timeout(timeout).build().unwrap();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": tag}]});
    match client.post(format!("{}/v1/chat/completions", proxy.url())).json(&body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let body = resp.bytes().await.map(|b| b.to_vec()).map_err(|e| format!("{e:?}"));
            Seen::Answer { status, retry_after, body }
        }
        Err(e) => Seen::Failed { timeout: e.is_timeout() },
    }
}

fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok()
}

#[tokio::test]
async fn without_faults_it_forwards_the_upstreams_answers_unchanged() {
    let sim = SimServer::start(SimConfig::zero_latency()).await.unwrap();
    let proxy = FaultProxy::start(ProxyConfig::new(sim.url())).await.unwrap();
    for i in 0..20 {
        match send(&proxy, &format!("job {i}"), Duration::from_secs(5)).await {
            Seen::Answer { status: 200, body: Ok(body), .. } => assert!(is_json(&body), "{body:?}"),
            other => panic!("{other:?}"),
        }
    }
    let stats = proxy.stats();
    assert_eq!((stats.requests, stats.forwarded), (20, 20));
    assert!(stats.faults.is_empty(), "{stats:?}");
    assert_eq!(sim.stats().ok, 20);
}

#[tokio::test]
async fn status_faults_answer_with_their_status_and_retry_after() {
    for (kind, status, retry_after) in [
        (ProxyFault::Error500, 500, None),
        (ProxyFault::Error502, 502, None),
        (ProxyFault::Error503RetryAfter, 503, Some("1")),
        (ProxyFault::Error503, 503, None),
        (ProxyFault::Burst429, 429, Some("1")),
    ] {
        let (sim, proxy) = proxy_with(kind, |_| {}).await;
        match send(&proxy, "a", Duration::from_secs(5)).await {
            Seen::Answer { status: s, retry_after: ra, .. } => {
                assert_eq!((s, ra.as_deref()), (status, retry_after), "{kind:?}")
            }
            other => panic!("{kind:?}: {other:?}"),
        }
        assert_eq!(proxy.stats().faults[kind.name()], 1, "{kind:?}");
        assert_eq!(sim.stats().ok, 0, "{kind:?} needs no upstream answer");
    }
}

#[tokio::test]
async fn a_429_burst_refuses_the_next_requests_whatever_they_are() {
    // One request in 100 draws a burst of 6: the 5 after it are refused too, whatever their own draw.
    let (_sim, proxy) = proxy_with(ProxyFault::Burst429, |c| {
        c.burst = 6;
        c.burst_for = Duration::from_secs(3600);
        c.rates.insert(ProxyFault::Burst429, 0.01);
    })
    .await;
    let statuses = futures_seq(&proxy, 500).await;
    let first = statuses.iter().position(|&s| s == 429).expect("a burst within 500 requests");
    assert!(statuses[..first].iter().all(|&s| s == 200));
    assert_eq!(statuses[first..first + 6], [429; 6]);
    let bursts = proxy.stats().faults["429-burst"];
    assert_eq!(bursts % 6, 0, "whole bursts: {bursts}");
}

async fn futures_seq(proxy: &FaultProxy, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        match send(proxy, &format!("other {i}"), Duration::from_secs(5)).await {
            Seen::Answer { status, .. } => out.push(status),
            other => panic!("{other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn connection_faults_fail_the_request_or_its_body() {
    let (_sim, proxy) = proxy_with(ProxyFault::ResetBefore, |_| {}).await;
    assert!(matches!(send(&proxy, "a", Duration::from_secs(5)).await, Seen::Failed { timeout: false }));
    for kind in [ProxyFault::ResetMidBody, ProxyFault::Truncated] {
        let (sim, proxy) = proxy_with(kind, |_| {}).await;
        match send(&proxy, "a", Duration::from_secs(5)).await {
            Seen::Answer { status: 200, body: Err(_), .. } => {}
            other => panic!("{kind:?}: {other:?}"),
        }
        assert_eq!(sim.stats().ok, 1, "{kind:?} spoils the upstream's answer");
    }
    let (_sim, proxy) = proxy_with(ProxyFault::Garbage, |_| {}).await;
    match send(&proxy, "a", Duration::from_secs(5)).await {
        Seen::Answer { status: 200, body: Ok(body), .. } => assert!(!is_json(&body), "{body:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stalls_long_lengths_and_drips_outlast_a_client_timeout() {
    for kind in [ProxyFault::Stall, ProxyFault::LongLength, ProxyFault::Drip] {
        let (_sim, proxy) = proxy_with(kind, |_| {}).await;
        let started = std::time::Instant::now();
        match send(&proxy, "a", Duration::from_millis(600)).await {
            Seen::Failed { timeout: true } => {}
            Seen::Answer { body: Err(e), .. } => assert!(e.contains("TimedOut") || e.contains("timed out"), "{e}"),
            other => panic!("{kind:?}: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{kind:?}");
        // The proxy sees the client leave at its timeout (soon after, as the connection closes), not at the end
        // of the 30 s stall.
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        while proxy.stats().longest_held_ms == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held = proxy.stats().longest_held_ms;
        assert!((500..10_000).contains(&held), "{kind:?} held {held} ms");
    }
}

#[tokio::test]
async fn a_huge_answer_is_as_large_as_configured_and_limited_in_number() {
    let (_sim, proxy) = proxy_with(ProxyFault::Huge, |c| {
        c.huge_bytes = 5_000_000;
        c.huge_limit = 1;
    })
    .await;
    match send(&proxy, "a", Duration::from_secs(20)).await {
        Seen::Answer { status: 200, body: Ok(body), .. } => {
            assert_eq!(body.len(), 5_000_000);
            assert!(is_json(&body), "valid JSON when read to the end");
        }
        other => panic!("{other:?}"),
    }
    // Past the limit the draw is forwarded as it is.
    match send(&proxy, "b", Duration::from_secs(5)).await {
        Seen::Answer { status: 200, body: Ok(body), .. } => assert!(body.len() < 10_000 && is_json(&body)),
        other => panic!("{other:?}"),
    }
    assert_eq!(proxy.stats().forwarded, 1);
}

#[tokio::test]
async fn a_mix_spreads_its_share_over_every_kind_and_rates_over_one_are_refused() {
    let cfg = ProxyConfig::new("http://127.0.0.1:9").with_mix(0.13);
    assert_eq!(cfg.rates.len(), ProxyFault::ALL.len());
    // 0.01 of each kind's draws, a burst's a fifth of that (each refuses 5 requests).
    assert!((cfg.total() - (0.12 + 0.01 / 5.0)).abs() < 1e-9, "{}", cfg.total());
    assert!((cfg.rates[&ProxyFault::Burst429] * cfg.burst as f64 - cfg.rates[&ProxyFault::Stall]).abs() < 1e-12);
    let over =
        ProxyConfig::new("http://127.0.0.1:9").with_rate(ProxyFault::Stall, 0.7).with_rate(ProxyFault::Drip, 0.7);
    assert!(FaultProxy::start(over).await.is_err());
    assert_eq!("429-burst".parse::<ProxyFault>(), Ok(ProxyFault::Burst429));
    assert!("nope".parse::<ProxyFault>().unwrap_err().contains("reset-before"));
}
