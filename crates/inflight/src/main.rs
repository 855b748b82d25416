//! The `inflight` binary: parse arguments, run the command, map errors to exit codes.

use std::io::IsTerminal;

use clap::Parser;
use inflight::cli::{execute, Cli, CommandError, Exit};
use inflight::store::StoreError;

fn main() {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("inflight={default}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("inflight: cannot start: {e}");
            std::process::exit(Exit::Setup as i32);
        }
    };
    let code = match runtime.block_on(execute(cli)) {
        Ok(exit) => exit as i32,
        Err(e) => {
            let exit = e.downcast_ref::<CommandError>().map(|c| c.exit).unwrap_or(Exit::Setup);
            if is_broken_pipe(&e) {
                0
            } else if is_disk_full(&e) {
                eprintln!(
                    "inflight: {e:#}\nThe disk is full. Every result recorded so far is whole and kept; free some space \
                     and run the same command again to resume."
                );
                Exit::DiskFull as i32
            } else {
                eprintln!("inflight: {e:#}");
                exit as i32
            }
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StoreError>().is_some_and(StoreError::is_disk_full)
            || c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
