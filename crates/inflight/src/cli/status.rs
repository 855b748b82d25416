//! `inflight status`: a run's progress and summary from its state, from any terminal.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::common::{setup_error, Exit};
use super::shared::is_alive;
use super::state::is_live;
use crate::report::{Summary, SummaryInput};
use crate::store::{Counts, PgUrl, PgWork, StepCount, Store, StoreError, WorkStore, WorkerRow, INGEST_DONE};

/// Arguments of `inflight status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The run's state database (OUT.inflight.db beside its output), or its PostgreSQL URL
    /// (`postgres://USER@HOST/DB?run=NAME`: then every worker of the run is shown).
    #[arg(long, value_name = "PATH|URL", env = "INFLIGHT_STATE")]
    pub state: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command. Exit 0 when every job succeeded, 1 otherwise (still going, failures or bad lines).
pub fn execute(args: StatusArgs) -> anyhow::Result<Exit> {
    if let Some(url) = PgUrl::from_state(&args.state).map_err(|e| setup_error(e.to_string()))? {
        return shared_status(&url, args.json);
    }
    let store = Store::open_read_only(&args.state).map_err(|e| setup_error(e.to_string()))?;
    let counts = store.counts()?;
    let summary = stored_summary(counts, store.latency_histogram()?, store.step_counts()?);
    let live = is_live(&args.state);
    let live_line =
        if live { store.meta("live")?.and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()) } else { None };
    let state = match (live, counts.pending) {
        (true, _) => "running",
        (false, 0) => "finished",
        (false, _) => "stopped",
    };
    if args.json {
        println!("{}", json!({"state": state, "summary": summary, "live": live_line}));
    } else {
        println!("{state}: {}", args.state.display());
        if let Some(line) = live_line.as_ref().and_then(|l| l["line"].as_str()) {
            println!("  now: {line}");
        }
        println!("{}", summary.render());
        if state == "stopped" {
            println!("  run the same `inflight run` command again to resume");
        }
    }
    Ok(exit_of(state, &counts))
}

/// A run's summary from what its state holds (no session of this process).
fn stored_summary(counts: Counts, latency: hdrhistogram::Histogram<u64>, steps: Vec<StepCount>) -> Summary {
    Summary::new(SummaryInput { counts, latency, session: None, retries: 0, cached_prompt_tokens: 0, steps })
}

/// `status`'s exit code: 0 when the run finished and every job succeeded, 1 otherwise.
fn exit_of(state: &str, counts: &Counts) -> Exit {
    if state == "finished" && counts.failed == 0 && counts.bad_lines == 0 {
        Exit::Success
    } else {
        Exit::SomeFailed
    }
}

/// `inflight status` of a shared run: its counts, and every worker that joined it with its last beat and rate.
fn shared_status(url: &PgUrl, json_out: bool) -> anyhow::Result<Exit> {
    let (counts, latency, workers, ingested) = super::shared::off_runtime(|| -> Result<_, StoreError> {
        let mut db = PgWork::open(url)?;
        let counts = db.totals()?;
        let latency = db.latency_histogram()?;
        let mut workers = Vec::new();
        for w in db.workers()? {
            let live = db.meta(&format!("live:{}", w.id.0))?.and_then(|b| serde_json::from_str(&b).ok());
            workers.push((w, live));
        }
        Ok((counts, latency, workers, db.meta(INGEST_DONE)?.is_some()))
    })
    .map_err(|e| setup_error(format!("cannot read the state {url}: {e}")))?;
    let summary = stored_summary(counts, latency, Vec::new());
    let alive = workers.iter().filter(|(w, _)| is_alive(w)).count();
    let state = match (alive, counts.pending == 0 && ingested) {
        (_, true) => "finished",
        (0, false) => "stopped",
        (_, false) => "running",
    };
    let rows: Vec<serde_json::Value> = workers
        .iter()
        .map(|(w, live): &(WorkerRow, Option<serde_json::Value>)| {
            json!({
                "id": w.id.0, "host": w.info.host, "pid": w.info.pid, "servers": w.info.servers,
                "last_beat_ms": w.beat_age_ms, "alive": is_alive(w),
                "jobs_per_s": live.as_ref().and_then(|l| l["jobs_per_s"].as_f64()),
                "line": live.as_ref().and_then(|l| l["line"].as_str()),
            })
        })
        .collect();
    if json_out {
        println!("{}", json!({"state": state, "summary": summary, "workers": rows}));
    } else {
        println!("{state}: {url}");
        for (w, live) in &workers {
            let beat = w.beat_age_ms as f64 / 1000.0;
            let how = if is_alive(w) {
                format!("last beat {beat:.1}s ago")
            } else {
                format!("gone (last beat {beat:.0}s ago)")
            };
            let rate = live
                .as_ref()
                .and_then(|l| l["jobs_per_s"].as_f64())
                .map(|r| format!(", {r:.1} jobs/s"))
                .unwrap_or_default();
            println!("  worker {} {}:{} [{}]: {how}{rate}", w.id.0, w.info.host, w.info.pid, w.info.servers.join(", "));
        }
        println!("{}", summary.render());
    }
    Ok(exit_of(state, &counts))
}
