//! `inflight export`: write a run's output files from its state, at any time (also while it runs).

use std::path::PathBuf;

use clap::Args;

use super::common::{setup_error, Exit};
use super::state::is_live;
use crate::output::{errors_path, export, Format};
use crate::store::{PgUrl, Store};

/// Arguments of `inflight export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The run's state database, or its PostgreSQL URL (`postgres://USER@HOST/DB?run=NAME`).
    #[arg(long, value_name = "PATH|URL", env = "INFLIGHT_STATE")]
    pub state: PathBuf,
    /// Where to write results; errors go to OUT.errors.jsonl beside it.
    #[arg(short, long, value_name = "OUT.jsonl")]
    pub output: PathBuf,
    /// Output line shape (a workflow run's lines keep theirs).
    #[arg(long, value_enum, default_value = "batch")]
    pub format: Format,
}

/// Runs the command.
pub fn execute(args: ExportArgs) -> anyhow::Result<Exit> {
    if let Some(url) = PgUrl::from_state(&args.state).map_err(|e| setup_error(e.to_string()))? {
        let (done, errors) = super::shared::export(&url, &args.output, args.format)?;
        report(done, errors, &args.output);
        return Ok(Exit::Success);
    }
    let store = Store::open_read_only(&args.state).map_err(|e| setup_error(e.to_string()))?;
    if is_live(&args.state) {
        let target = std::path::absolute(&args.output)?;
        if let Some(live_out) = store.meta("output")?.map(PathBuf::from) {
            if live_out == target || errors_path(&live_out) == target {
                return Err(setup_error(format!(
                    "{} is being written by the live run; export to another path",
                    args.output.display()
                )));
            }
        }
    }
    let format = Format::for_export(store.meta("format")?.as_deref(), args.format);
    let (done, errors) = export(&store, &args.output, format)?;
    report(done, errors, &args.output);
    Ok(Exit::Success)
}

fn report(done: u64, errors: u64, out: &std::path::Path) {
    eprintln!(
        "exported {done} results to {} and {errors} error records to {}",
        out.display(),
        errors_path(out).display()
    );
}
