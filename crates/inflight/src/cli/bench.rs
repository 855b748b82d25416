//! `inflight bench`: sweep concurrency levels against a server and recommend one, with an ETA.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::common::{Exit, ServerArgs};
use super::engine::{self, EngineArgs};
use super::jobs::JobArgs;
use super::parse;
use crate::backend::{ConnectOptions, InputsPerRequest, OllamaBackend};
use crate::bench::{best_row, csv, svg_chart, sweep, table, BenchReport, LevelRule, Request, SweepConfig};
use crate::job::{Parser, RequestDefaults};

/// Arguments of `inflight bench`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Each level runs until its rate is steady: the answers to requests sent in its first window \
are left out, and it stops once at least 3 windows and --min-answers answers give a 95% confidence interval within \
±--ci of the mean rate (or at --max-time-per-level, flagged NOT steady). Reports go to --report-dir: bench.json \
(schema in docs/schema/bench-report.schema.json), bench.csv and bench.svg.")]
pub struct BenchArgs {
    /// Which server, and how to talk to it.
    #[command(flatten)]
    pub conn: ServerArgs,
    /// Or no server: the embedded engine on a GGUF file (the sweep's levels are its sequences, swept for each
    /// thread count up to the physical cores unless --engine-threads fixes it).
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Model to benchmark.
    #[arg(short, long)]
    pub model: Option<String>,
    /// Take the workload from your own jobs file (same formats and templates as `run`), sampled.
    #[arg(long, value_name = "FILE")]
    pub jobs: Option<PathBuf>,
    /// How many lines of --jobs to sample (the first N that parse).
    #[arg(long, default_value_t = 500)]
    pub sample: usize,
    /// `--template`, `--system`, `--max-line-bytes`: --jobs lines are read as `run` reads its input.
    #[command(flatten)]
    pub job: JobArgs,
    /// Synthetic workload: prompt length in words (about tokens), mean over the requests.
    #[arg(long, default_value_t = 64)]
    pub prompt_tokens: usize,
    /// Output tokens per request (`max_tokens`): the synthetic mean; with --jobs, a default for lines that set
    /// none.
    #[arg(long, default_value_t = 64)]
    pub output_tokens: u64,
    /// Synthetic workload: how far prompt and output lengths spread around their means, percent (evenly,
    /// from mean × (1 − spread) to mean × (1 + spread)).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub spread: u8,
    /// Explicit levels, e.g. 1,2,4,8 (default: double from 1 until two doublings gain under 5%).
    #[arg(long, value_delimiter = ',')]
    pub levels: Vec<usize>,
    /// Highest level when doubling.
    #[arg(long, default_value_t = 256)]
    pub max_concurrency: usize,
    /// Embeddings only: inputs per request to sweep, each a row of a (batch size x concurrency) matrix.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Fewest answers per level.
    #[arg(long, default_value_t = 50)]
    pub min_answers: usize,
    /// Target half-width of the rate's 95% confidence interval, percent.
    #[arg(long, default_value_t = 5.0)]
    pub ci: f64,
    /// Time cap per level.
    #[arg(long, default_value = "90s", value_parser = parse::duration)]
    pub max_time_per_level: Duration,
    /// Predict how long this many jobs take at the recommended level.
    #[arg(long, value_parser = parse::count)]
    pub for_jobs: Option<u64>,
    /// Where bench.json, bench.csv and bench.svg go.
    #[arg(long, default_value = "bench-report")]
    pub report_dir: PathBuf,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub async fn execute(args: BenchArgs) -> anyhow::Result<Exit> {
    let opts = ConnectOptions {
        api_key: args.conn.api_key.clone(),
        request_timeout: Duration::from_secs(600),
        runner_options: OllamaBackend::runner_options_of(&[]),
        inputs_per_request: InputsPerRequest::Fixed(1),
    };
    // The jobs file first: a missing file or a bad template is refused before the server is contacted.
    let (requests, workload) = workload(&args)?;
    let (conn, handle) = engine::open(&args.conn, &args.engine, &opts, args.max_concurrency as u64).await?;
    let (server, server_description) = (conn.backend.url().to_owned(), conn.info.description.clone());
    let cfg = SweepConfig {
        batch_sizes: args.batch_sizes.iter().map(|&b| b.max(1)).collect(),
        levels: args.levels.clone(),
        max_concurrency: args.max_concurrency.max(1),
        rule: LevelRule { min_answers: args.min_answers, ci: args.ci / 100.0, max_time: args.max_time_per_level },
        flat: 0.05,
    };
    let steady_rule = format!(
        "answers to requests sent in a level's first window left out; windows of >= 1 s, 2 median latencies and \
         2 x concurrency answers, rate = tokens per second of latency x concurrency; steady when >= 3 windows and \
         >= {} answers give a 95% CI within ±{}%; else stopped at {}s and flagged",
        args.min_answers,
        args.ci,
        args.max_time_per_level.as_secs()
    );
    let quiet = args.json;
    // On a terminal the live line is redrawn in place; elsewhere (logs, CI) only each level's result is written.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = |line: String, done: bool| match (quiet, tty) {
        (true, _) => {}
        (false, true) if done => eprintln!("\r\x1b[2K{line}"),
        (false, true) => eprint!("\r\x1b[2K{line}"),
        (false, false) if done => eprintln!("{line}"),
        (false, false) => {}
    };
    // The engine's levels are its sequences; unless --engine-threads fixes them, each thread count up to the
    // physical cores is a row of its own (a fresh engine each), and the fastest row's recommendation wins.
    let thread_rows: Vec<usize> = match &handle {
        Some(h) if args.engine.engine_threads.is_none() => (1..=engine::threads(h).1.max(1)).collect(),
        _ => Vec::new(),
    };
    let (levels, first_20, recommendation) = if thread_rows.is_empty() {
        sweep(conn.backend.clone(), conn.info.kind, requests, &cfg, args.for_jobs, &mut progress).await
    } else {
        drop((conn, handle));
        let mut rows = Vec::new();
        let mut first = None;
        for threads in thread_rows {
            let fixed = EngineArgs { engine_threads: Some(threads as u64), ..args.engine.clone() };
            let (conn, _engine) = engine::open(&args.conn, &fixed, &opts, args.max_concurrency as u64).await?;
            if !quiet {
                eprintln!("engine, {threads} threads:");
            }
            let (mut levels, first_20, rec) =
                sweep(conn.backend.clone(), conn.info.kind, requests.clone(), &cfg, args.for_jobs, &mut progress).await;
            levels.iter_mut().for_each(|l| l.threads = Some(threads));
            first = first.or(first_20);
            rows.push((threads, levels, rec));
        }
        let recommendation = best_row(&rows).expect("at least one thread count");
        (rows.into_iter().flat_map(|(_, levels, _)| levels).collect(), first, recommendation)
    };
    let report = BenchReport { server, server_description, workload, steady_rule, first_20, levels, recommendation };
    std::fs::create_dir_all(&args.report_dir)?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.report_dir.join("bench.json"), &json)?;
    std::fs::write(args.report_dir.join("bench.csv"), csv(&report.levels))?;
    let svg = args.report_dir.join("bench.svg");
    std::fs::write(&svg, svg_chart(&report))?;
    // PNG through librsvg's converter when it is installed; the SVG is the chart either way.
    let png = std::process::Command::new("rsvg-convert")
        .arg(&svg)
        .arg("-o")
        .arg(args.report_dir.join("bench.png"))
        .status()
        .is_ok_and(|s| s.success());
    if args.json {
        println!("{json}");
    } else {
        print!("{}", table(&report));
        let formats = if png { "json,csv,svg,png" } else { "json,csv,svg" };
        println!("reports: {}/bench.{{{formats}}}", args.report_dir.display());
        if !png {
            println!("(for bench.png too, install rsvg-convert: Debian package librsvg2-bin)");
        }
    }
    Ok(Exit::Success)
}

fn workload(args: &BenchArgs) -> anyhow::Result<(Vec<Request>, String)> {
    let defaults = RequestDefaults {
        model: args.model.clone(),
        max_tokens: Some(args.output_tokens),
        system: args.job.system.clone(),
        ..Default::default()
    };
    let Some(path) = &args.jobs else {
        let parser = Parser::new(defaults, None);
        let spread = f64::from(args.spread) / 100.0;
        let requests = (0..100)
            .map(|i| {
                // Lengths evenly spread from mean × (1 − spread) to mean × (1 + spread), in a fixed order.
                let factor = 1.0 - spread + 2.0 * spread * f64::from(i) / 99.0;
                let words = ((args.prompt_tokens as f64 * factor).round() as usize).max(1);
                let max_tokens = ((args.output_tokens as f64 * factor).round() as u64).max(1);
                let prompt = format!("Item {i}. {}", "lorem ".repeat(words));
                let line = serde_json::json!({"prompt": prompt, "max_tokens": max_tokens}).to_string();
                let job = parser.parse(1, line.as_bytes()).ok().flatten().expect("a synthetic line parses");
                Request { endpoint: job.endpoint, body: job.body, inputs: 1 }
            })
            .collect();
        let what = format!(
            "synthetic: ~{} prompt words and at most {} output tokens on average, each spread ±{}%",
            args.prompt_tokens, args.output_tokens, args.spread
        );
        return Ok((requests, what));
    };
    // A bad line is printed as `run --dry-run` prints it, and left out of the sample: never sent.
    let parser = args.job.parser(defaults)?;
    let requests: Vec<Request> = args
        .job
        .sample(path, &parser, args.sample)?
        .into_iter()
        .map(|job| Request { endpoint: job.endpoint, body: job.body, inputs: 1 })
        .collect();
    let what = format!("{} jobs sampled from {}", requests.len(), path.display());
    Ok((requests, what))
}
