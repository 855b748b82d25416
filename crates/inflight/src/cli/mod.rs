//! The command line: one file per command, clap derive, doc comments as help text.

mod bench;
mod cache;
mod common;
mod doctor;
mod engine;
mod export;
mod jobs;
mod parse;
mod run;
mod run_args;
mod serve;
mod servers_file;
mod session;
mod shared;
mod state;
mod status;
mod targets;
mod workflow;

pub use bench::BenchArgs;
pub use cache::{CacheArgs, CacheCommandArgs};
pub use common::{setup_error, CommandError, Exit, ServerArgs};
pub use doctor::DoctorArgs;
pub use export::ExportArgs;
pub use jobs::JobArgs;
pub use run_args::{RunArgs, SendArgs};
pub use serve::ServeArgs;
pub use status::StatusArgs;

use clap::{Parser, Subcommand};

/// Push large batches of jobs through local LLM servers (Ollama, llama-server, vLLM, LM Studio) at the
/// fastest sustainable rate, durably: results exactly once, resumable after any crash.
#[derive(Debug, Parser)]
#[command(name = "inflight", version, propagate_version = true, max_term_width = 110)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log more (-v: info, -vv: debug). Logs go to stderr; RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a JSONL file of jobs against a server; run it again to resume.
    Run(Box<RunArgs>),
    /// Show a run's progress and summary (from any terminal, while it runs or after).
    Status(StatusArgs),
    /// Write a run's output files from its state, at any time.
    Export(ExportArgs),
    /// Measure a server honestly: sweep concurrency levels to steady state, recommend one, predict a run's time.
    Bench(Box<BenchArgs>),
    /// Find the bottleneck across client concurrency, server lanes and threads, with the line to paste.
    Doctor(Box<DoctorArgs>),
    /// Serve OpenAI's Files and Batches APIs on local models: upload a JSONL file, create a batch, poll it,
    /// download the results; batches run one at a time, first in first out, with a dashboard and /metrics.
    Serve(Box<ServeArgs>),
    /// The response cache shared by runs: `stats` (with an integrity check), `prune --older-than 30d`.
    Cache(CacheCommandArgs),
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Run(args) => match args.workflow.clone() {
            Some(flow) => workflow::execute(*args, &flow).await,
            None => run::execute(*args).await,
        },
        Command::Status(args) => status::execute(args),
        Command::Export(args) => export::execute(args),
        Command::Bench(args) => bench::execute(*args).await,
        Command::Doctor(args) => doctor::execute(*args).await,
        Command::Serve(args) => serve::execute(*args).await,
        Command::Cache(args) => cache::execute(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn parsed_arguments_print_no_api_key() {
        let key = "sk-parsed-3c1e";
        let commands: [&[&str]; 4] = [
            &["inflight", "run", "j.jsonl", "-o", "o.jsonl", "--api-key", key],
            &["inflight", "bench", "--api-key", key],
            &["inflight", "doctor", "--api-key", key],
            &["inflight", "serve", "--data", "d", "--api-key", key],
        ];
        for argv in commands {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let shown = format!("{cli:?}");
            assert!(!shown.contains(key) && shown.contains("ApiKey(redacted)"), "{shown}");
        }
    }
}
