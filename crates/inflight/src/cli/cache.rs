//! The response cache's flags (`run`) and `inflight cache stats|prune`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::common::{setup_error, Exit};
use super::parse;
use crate::cache::{self, CacheMode, ResponseCache};

/// How a run uses the response cache.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Response cache (across runs)")]
pub struct CacheArgs {
    /// Answer a request that an earlier run (of any input file) already had answered from the response cache
    /// instead of sending it: `deterministic` caches requests at temperature 0, with a seed, or embeddings;
    /// `always` every request; `off` none.
    #[arg(long, value_enum, env = "INFLIGHT_CACHE", default_value = "deterministic")]
    pub cache: CacheMode,
    /// The response cache file. Default: inflight/responses.db in the user's cache directory.
    #[arg(long, value_name = "FILE", env = "INFLIGHT_CACHE_PATH")]
    pub cache_path: Option<PathBuf>,
}

impl CacheArgs {
    /// The cache file.
    pub fn path(&self) -> PathBuf {
        self.cache_path.clone().unwrap_or_else(cache::default_path)
    }

    /// The cache for a run on a server whose model identity is `identity`; `None` when off or when it cannot
    /// be opened (the run goes on without it and says why).
    pub fn open(&self, identity: Option<String>) -> Option<Arc<ResponseCache>> {
        if self.cache == CacheMode::Off {
            return None;
        }
        match ResponseCache::open(&self.path(), self.cache, identity) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                eprintln!("warning: {e}; running without the response cache");
                None
            }
        }
    }
}

/// Arguments of `inflight cache`.
#[derive(Debug, Clone, Args)]
pub struct CacheCommandArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: CacheAction,
    /// The response cache file. Default: inflight/responses.db in the user's cache directory.
    #[arg(long, value_name = "FILE", env = "INFLIGHT_CACHE_PATH", global = true)]
    pub cache_path: Option<PathBuf>,
}

/// `inflight cache` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum CacheAction {
    /// How many answers the cache holds, their size, and SQLite's integrity check.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove answers no run has used for a while.
    Prune {
        /// Remove answers last used longer ago than this (`30d`, `12h`).
        #[arg(long, value_name = "AGE", value_parser = parse::duration)]
        older_than: Duration,
    },
}

/// Runs `inflight cache`.
pub fn execute(args: CacheCommandArgs) -> anyhow::Result<Exit> {
    let path = args.cache_path.unwrap_or_else(cache::default_path);
    if !path.exists() {
        return Err(setup_error(format!("no response cache at {} (no run has used it yet)", path.display())));
    }
    match args.action {
        CacheAction::Stats { json } => {
            let s = cache::stats(&path).map_err(|e| setup_error(e.to_string()))?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("response cache {}: {} answers, {} bytes of bodies", s.path, s.entries, s.body_bytes);
                for (endpoint, n) in &s.by_endpoint {
                    println!("  {endpoint}: {n}");
                }
                if let Some(age) = s.oldest_use_s {
                    println!("  least recently used: {:.0} s ago", age);
                }
                println!("  integrity: {}", s.integrity);
            }
            Ok(if s.integrity == "ok" { Exit::Success } else { Exit::SomeFailed })
        }
        CacheAction::Prune { older_than } => {
            let removed = cache::prune(&path, older_than).map_err(|e| setup_error(e.to_string()))?;
            println!("removed {removed} answers not used for {}", humanize(older_than));
            Ok(Exit::Success)
        }
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86400 && s % 86400 == 0 => format!("{} days", s / 86400),
        s if s >= 3600 && s % 3600 == 0 => format!("{} hours", s / 3600),
        s => format!("{s} s"),
    }
}
