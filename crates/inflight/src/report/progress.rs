//! The live display: an indicatif bar on a terminal; one plain status line every `--status-every` otherwise.
//! Either way it also hands the session a `live` blob every second, which the session keeps in the store for
//! `inflight status` to read from elsewhere; the display itself writes nothing.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::live::Health;
use crate::live::LiveStats;
use crate::store::now_ms;
use crate::tune::{Limiter, RateWindow, TuneStatus};

const TICK: Duration = Duration::from_millis(250);
const WINDOW: Duration = Duration::from_secs(30);

/// The running display; [`ProgressHandle::finish`] clears it.
pub struct ProgressHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ProgressHandle {
    /// Stops and clears the display.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What the display shows and where.
pub struct ProgressSource {
    /// Counters of this session.
    pub stats: Arc<LiveStats>,
    /// The limiter (for the limit and the number in flight); `None` when `detail` says what is in flight.
    pub limiter: Option<Limiter>,
    /// What is in flight, for runs with several limiters (workflows: the loaded model, the step mix, switches).
    pub detail: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Each server's state, for `status --json` (runs of several servers).
    pub servers: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
    /// Health (for the paused state).
    pub health: Health,
    /// Where the `live` blob goes (the session stores it for `inflight status`).
    pub live: Box<dyn Fn(String) + Send + Sync>,
    /// Jobs already finished before this session.
    pub finished_before: u64,
    /// Jobs in the run.
    pub total: u64,
    /// Plain-line period when not on a terminal.
    pub status_every: Duration,
    /// How to show it.
    pub display: Display,
    /// The controller's state, for `--concurrency auto`.
    pub tune: Option<Arc<std::sync::Mutex<TuneStatus>>>,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A live bar (stderr is a terminal).
    Bar,
    /// A plain status line every `status_every` (logs, pipes, CI).
    Lines,
    /// Nothing (the live blob for `inflight status` is still kept).
    Quiet,
}

impl Display {
    /// A bar on a terminal, lines otherwise; nothing when `quiet`.
    pub fn detect(quiet: bool) -> Display {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// Starts the display task.
pub fn spawn_progress(src: ProgressSource) -> ProgressHandle {
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(src, stop.clone()));
    ProgressHandle { stop, task }
}

async fn run(src: ProgressSource, stop: CancellationToken) {
    let bar = match src.display {
        Display::Bar => {
            let bar = ProgressBar::new(src.total);
            bar.set_style(
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Some(bar)
        }
        _ => None,
    };
    let mut jobs = RateWindow::new(WINDOW);
    let mut tokens = RateWindow::new(WINDOW);
    let mut last_line = Instant::now();
    let mut last_live = Instant::now() - Duration::from_secs(60);
    let mut interval = tokio::time::interval(TICK);
    loop {
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = stop.cancelled() => true,
        };
        let now = Instant::now();
        let done = src.stats.done.load(Ordering::Relaxed);
        let failed = src.stats.failed.load(Ordering::Relaxed);
        jobs.record(now, done + failed);
        tokens.record(now, src.stats.completion_tokens.load(Ordering::Relaxed));
        let finished = src.finished_before + done + failed;
        let rate = jobs.rate().unwrap_or(0.0);
        let eta = (rate > 0.0).then(|| Duration::from_secs_f64(src.total.saturating_sub(finished) as f64 / rate));
        let state = if src.health.is_paused() { " PAUSED: server unreachable, probing" } else { "" };
        let tuning = match &src.tune {
            Some(t) => format!(" (auto: {})", t.lock().map(|t| t.phase.name()).unwrap_or("?")),
            None => String::new(),
        };
        let flight = match (&src.detail, &src.limiter) {
            (Some(detail), _) => detail(),
            (None, Some(l)) => format!("in flight {}/{}{tuning}", l.in_flight(), l.limit()),
            (None, None) => String::new(),
        };
        let line = format!(
            "{finished}/{total} done, {failed} failed | {rate:.1} jobs/s, {tok:.0} tok/s | {flight} | ETA {eta}{state}",
            total = src.total,
            tok = tokens.rate().unwrap_or(0.0),
            eta = eta.map(format_duration).unwrap_or_else(|| "-".into()),
        );
        if now.duration_since(last_live) >= Duration::from_secs(1) || stopping {
            let blob = json!({"pid": std::process::id(), "updated_ms": now_ms(), "line": line,
                              "jobs_per_s": rate, "in_flight": src.limiter.as_ref().map(Limiter::in_flight),
                              "limit": src.limiter.as_ref().map(Limiter::limit), "paused": src.health.is_paused(),
                              "servers": src.servers.as_ref().map(|s| s())});
            (src.live)(blob.to_string());
            last_live = now;
        }
        if let Some(bar) = &bar {
            bar.set_position(finished);
            bar.set_message(line.split_once(" done, ").map(|(_, r)| format!("done, {r}")).unwrap_or_default());
        } else if src.display == Display::Lines && (now.duration_since(last_line) >= src.status_every) && !stopping {
            eprintln!("{line}");
            last_line = now;
        }
        if stopping {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return;
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }
}
