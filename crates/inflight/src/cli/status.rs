//! `inflight status`: a run's progress and summary from its state, from any terminal.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::common::{setup_error, Exit};
use super::state::is_live;
use crate::report::{Summary, SummaryInput};
use crate::store::{PgUrl, Store};

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
        return super::shared::status(&url, args.json);
    }
    let store = Store::open_read_only(&args.state).map_err(|e| setup_error(e.to_string()))?;
    let counts = store.counts()?;
    let summary = Summary::new(SummaryInput {
        counts,
        latency: store.latency_histogram()?,
        session: None,
        retries: 0,
        cached_prompt_tokens: 0,
        steps: store.step_counts()?,
    });
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
    Ok(if state == "finished" && counts.failed == 0 && counts.bad_lines == 0 {
        Exit::Success
    } else {
        Exit::SomeFailed
    })
}
