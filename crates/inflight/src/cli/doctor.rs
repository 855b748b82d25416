//! `inflight doctor`: examine the host, the server and a short live probe, and say what to change.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::common::{setup_error, Exit, ServerArgs};
use super::jobs::JobArgs;
use super::parse;
use crate::doctor::{examine, report, DoctorConfig};

/// Arguments of `inflight doctor`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Throughput is set by three layers at once: how many requests the client keeps in flight, \
how many the server runs in parallel (lanes), and how many CPU threads it runs them with, against the physical \
cores. doctor reads the host (cores, memory, GPUs, load), asks the server what it can (llama-server /props, /slots, \
/metrics; Ollama /api/ps; vLLM /metrics), reads a local server's command line and environment for what it does not \
say (llama-server's -t), and probes it at 1, 2, 4 and 8 in flight. Each verdict comes with its numbers and a line \
to paste.\n\nExit status: 0 nothing to change, 1 a verdict says something should change, 2 usage error or no \
usable server.")]
pub struct DoctorArgs {
    /// Which server, and how to talk to it.
    #[command(flatten)]
    pub conn: ServerArgs,
    /// Model to probe (default: the first the server lists).
    #[arg(short, long)]
    pub model: Option<String>,
    /// Your jobs file: doctor samples it for prompt sizes and models, and probes with its requests.
    #[arg(long, value_name = "FILE")]
    pub jobs: Option<PathBuf>,
    /// How many lines of --jobs to sample (the first N that parse).
    #[arg(long, default_value_t = 200)]
    pub sample: usize,
    /// `--template`, `--system`, `--max-line-bytes`: --jobs lines are read as `run` reads its input.
    #[command(flatten)]
    pub job: JobArgs,
    /// The concurrency your own client uses (e.g. your script's worker count), to compare with the lanes.
    #[arg(short, long)]
    pub concurrency: Option<usize>,
    /// How long the live probe may take in all (0 skips it: settings only, no requests sent).
    #[arg(long, default_value = "60s", value_parser = parse::duration)]
    pub probe_time: Duration,
    /// Output tokens per probe request (`max_tokens`).
    #[arg(long, default_value_t = 32)]
    pub output_tokens: u64,
    /// Print the report as JSON (schema: docs/schema/doctor-report.schema.json) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub async fn execute(args: DoctorArgs) -> anyhow::Result<Exit> {
    let cfg = DoctorConfig {
        server: args.conn.single()?.map(str::to_owned),
        api: args.conn.api,
        api_key: args.conn.api_key,
        model: args.model,
        jobs: args.jobs,
        sample: args.sample.max(1),
        template: args.job.template_file()?,
        system: args.job.system,
        max_line_bytes: args.job.max_line_bytes,
        probe_time: args.probe_time,
        output_tokens: args.output_tokens,
        client_concurrency: args.concurrency,
    };
    let quiet = args.json;
    let report = examine(&cfg, |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })
    .await
    .map_err(|e| setup_error(e.to_string()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::text(&report));
    }
    Ok(if report.verdicts.is_empty() { Exit::Success } else { Exit::SomeFailed })
}
