//! The `inflight-fault-proxy` binary: forwards to an upstream server and injects faults, prints its URL on
//! stdout and serves until killed. `GET /proxy/stats` returns what it did as JSON.

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use inflight_sim::{FaultProxy, ProxyConfig, ProxyFault};

/// A fault-injecting HTTP proxy for testing clients of LLM servers: resets, stalls, truncated and garbage
/// bodies, 5xx, 429 bursts, a slow drip and huge answers, each at its own rate per attempt.
#[derive(Debug, Parser)]
#[command(name = "inflight-fault-proxy", version)]
struct Args {
    /// The server to forward to, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    upstream: String,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// This share of attempts faulted, spread evenly over every kind (then refined by --fault).
    #[arg(long, default_value_t = 0.0)]
    mix: f64,
    /// One kind's rate, KIND=P (repeatable). Kinds: reset-before, reset-mid-body, stall, truncated,
    /// long-length, garbage, 500, 502, 503-retry-after, 503, 429-burst, drip, huge.
    #[arg(long = "fault", value_parser = parse_rate)]
    faults: Vec<(ProxyFault, f64)>,
    /// At most this many huge answers in all.
    #[arg(long)]
    huge_limit: Option<u64>,
    /// Size of a huge answer in MB.
    #[arg(long, default_value_t = 100)]
    huge_mb: u64,
    /// Requests one 429 burst refuses (set before --mix spreads the share: a burst is drawn this many times
    /// less often than the other kinds).
    #[arg(long, default_value_t = 5)]
    burst: u32,
    /// Milliseconds a 429 burst lasts at most.
    #[arg(long, default_value_t = 500)]
    burst_ms: u64,
    /// Seconds a stall holds the connection before closing it.
    #[arg(long, default_value_t = 120.0)]
    stall_secs: f64,
}

fn parse_rate(s: &str) -> Result<(ProxyFault, f64), String> {
    let (kind, p) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KIND=P"))?;
    let p: f64 = p.parse().map_err(|_| format!("{p:?} is not a probability"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{p} is not between 0 and 1"));
    }
    Ok((kind.parse()?, p))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut cfg = ProxyConfig::new(a.upstream);
    cfg.burst = a.burst.max(1);
    cfg = cfg.with_mix(a.mix);
    for (kind, p) in a.faults {
        cfg = cfg.with_rate(kind, p);
    }
    cfg.port = a.port;
    cfg.seed = a.seed;
    cfg.huge_limit = a.huge_limit.unwrap_or(u64::MAX);
    cfg.huge_bytes = a.huge_mb * 1_000_000;
    cfg.burst_for = Duration::from_millis(a.burst_ms);
    cfg.stall_for = Duration::from_secs_f64(a.stall_secs.max(0.0));
    let proxy = FaultProxy::start(cfg).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", proxy.url())?;
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    Ok(())
}
