//! `--servers-file FILE`: servers of a run, one URL per line, read again when the file changes (it is looked at
//! every second) or when the process gets SIGHUP, so servers join and leave a run while it goes. A server that
//! joins gets its own limiter and controller like any other; one that leaves the file takes no new jobs and
//! finishes those it holds; one that does not answer yet is tried again every few seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::common::setup_error;
use super::run_args::RunArgs;
use super::targets::Fleet;
use crate::backend::{connect, ConnectOptions, Connection};
use crate::dispatch::TargetChange;

/// How often the file is looked at.
const POLL: Duration = Duration::from_secs(1);
/// How often a listed server that did not answer is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The URLs in a servers file: one per line, surrounding blanks trimmed; blank lines and lines starting with `#`
/// are skipped; a URL listed twice counts once.
pub fn parse(text: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        if !line.is_empty() && !line.starts_with('#') && !urls.iter().any(|u| u == line) {
            urls.push(line.to_owned());
        }
    }
    urls
}

/// The file's URLs, or a setup error naming it.
pub fn read(path: &Path) -> anyhow::Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| setup_error(format!("cannot read the servers file {}: {e}", path.display())))?;
    let urls = parse(&text);
    Ok((text, urls))
}

/// What the file said when it was last read, and what came of each URL in it.
pub struct Listed {
    path: PathBuf,
    text: String,
    /// The `--server` URLs: in the run whatever the file says.
    given: Vec<String>,
    /// Each URL of the file: the server's URL once connected (`Ok`), or when it was last tried (`Err`).
    urls: BTreeMap<String, Result<String, Instant>>,
}

impl Listed {
    /// Connects to each URL of the file at `path` (read as `text`); those that do not answer are tried again
    /// by the watcher. Returns the connections made.
    pub async fn connect(
        path: &Path,
        text: String,
        given: &[String],
        args: &RunArgs,
        opts: &ConnectOptions,
    ) -> (Listed, Vec<Connection>) {
        let mut listed = Listed { path: path.to_owned(), text, given: given.to_vec(), urls: BTreeMap::new() };
        let mut conns = Vec::new();
        for url in parse(&listed.text).into_iter().filter(|u| !given.contains(u)) {
            match try_connect(&url, args, opts).await {
                Some(conn) => {
                    listed.urls.insert(url, Ok(conn.backend.url().to_owned()));
                    conns.push(conn);
                }
                None => {
                    listed.urls.insert(url, Err(Instant::now()));
                }
            }
        }
        (listed, conns)
    }

    /// Watches the file until `stop`: servers added to it join the run (through `changes`, and into `fleet`
    /// for the progress line and the summary), servers removed from it leave.
    pub fn watch(
        mut self,
        args: RunArgs,
        fleet: Fleet,
        changes: UnboundedSender<TargetChange>,
        stop: CancellationToken,
        run_stop: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let opts = args.connect_options();
            let mut hangup = hangup();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                    _ = next_hangup(&mut hangup) => tracing::info!("SIGHUP: reading {} again", self.path.display()),
                }
                match std::fs::read_to_string(&self.path) {
                    Ok(text) => self.text = text,
                    Err(e) => tracing::warn!("cannot read the servers file {}: {e}", self.path.display()),
                }
                let wanted: Vec<String> = parse(&self.text).into_iter().filter(|u| !self.given.contains(u)).collect();
                let left: Vec<String> = self.urls.keys().filter(|u| !wanted.contains(u)).cloned().collect();
                for url in left {
                    if let Some(Ok(server)) = self.urls.remove(&url) {
                        eprintln!("server {server} left the servers file: it takes no new jobs");
                        let _ = changes.send(TargetChange::Retire(server));
                    }
                }
                for url in wanted {
                    let due = match self.urls.get(&url) {
                        Some(Ok(_)) => false,
                        Some(Err(tried)) => tried.elapsed() >= RETRY,
                        None => true,
                    };
                    if !due {
                        continue;
                    }
                    let conn = tokio::select! {
                        c = try_connect(&url, &args, &opts) => c,
                        _ = stop.cancelled() => return,
                    };
                    let Some(conn) = conn else {
                        self.urls.insert(url, Err(Instant::now()));
                        continue;
                    };
                    let server = conn.backend.url().to_owned();
                    eprintln!("server {server} joins the run (servers file): {}", conn.info.description);
                    let target = fleet.join(conn, &args, &run_stop);
                    let _ = changes.send(TargetChange::Add(target));
                    self.urls.insert(url, Ok(server));
                }
            }
        })
    }
}

/// A connection to `url`, or `None` (said once on stderr) when it does not answer as a server.
async fn try_connect(url: &str, args: &RunArgs, opts: &ConnectOptions) -> Option<Connection> {
    match connect(Some(url), args.conn.api, opts).await {
        Ok(conn) => Some(conn),
        Err(e) => {
            eprintln!("servers file: {e}; trying it again every {} s", RETRY.as_secs());
            None
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

/// SIGHUP, where the platform has it (listening also keeps it from ending the process).
fn hangup() -> Hangup {
    #[cfg(unix)]
    return tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    None
}

async fn next_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        signal.recv().await;
        return;
    }
    let _ = hangup;
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_file_is_one_url_a_line_without_blanks_comments_or_repeats() {
        let text = "http://a:1\n\n  # a comment\n http://b:2  \nhttp://a:1\r\n#http://c:3\n";
        assert_eq!(parse(text), vec!["http://a:1", "http://b:2"]);
        assert!(parse("").is_empty());
        assert!(parse("# only comments\n\n").is_empty());
    }
}
