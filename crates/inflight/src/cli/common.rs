//! What every command shares: the server flags, the exit codes, and the error that carries one.

/// The server flags shared by `run`, `bench` and `doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's base URL. Default: the first of localhost:11434, 8080, 9931, 8000, 1234, 30000 that
    /// answers. `run` takes several: each job goes to whichever server has its model and a free request slot
    /// (each server's concurrency is tuned on its own); in a workflow, steps name theirs with `server:`.
    #[arg(long, env = "INFLIGHT_SERVER")]
    pub server: Vec<String>,
    /// `run`: more servers, one URL per line (blank lines and `#` comments skipped). The file is read again
    /// when it changes, or on SIGHUP: a server added joins the run within seconds, one removed takes no new
    /// jobs; a listed server that does not answer is tried again every few seconds.
    #[arg(long, value_name = "FILE", env = "INFLIGHT_SERVERS_FILE")]
    pub servers_file: Option<std::path::PathBuf>,
    /// The server's API; detected when not given.
    #[arg(long, value_enum)]
    pub api: Option<crate::backend::Api>,
    /// Bearer token for servers that need one (never printed or logged).
    #[arg(long, env = "INFLIGHT_API_KEY", hide_env_values = true)]
    pub api_key: Option<crate::backend::ApiKey>,
}

impl ServerArgs {
    /// The server of a command that talks to one; `None` to look on the usual ports.
    pub fn single(&self) -> anyhow::Result<Option<&str>> {
        if self.servers_file.is_some() {
            return Err(setup_error("--servers-file is for `run`; give this command one --server"));
        }
        match self.server.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(setup_error("--server is given more than once; only `run` uses several servers")),
        }
    }
}

/// Process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every job succeeded.
    Success = 0,
    /// The run finished, but some jobs failed or some lines were bad (doctor: a verdict says to change something).
    SomeFailed = 1,
    /// Usage or setup error (also: the first requests all failed the same way).
    Setup = 2,
    /// The disk holding the state or an output file is full: the run stopped with nothing recorded half, and
    /// the same command resumes it once there is space.
    DiskFull = 3,
    /// Interrupted by Ctrl-C or SIGTERM.
    Interrupted = 130,
}

impl Exit {
    /// What the code means, as one word for JSON reports.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::SomeFailed => "some_failed",
            Exit::Setup => "setup_error",
            Exit::DiskFull => "disk_full",
            Exit::Interrupted => "interrupted",
        }
    }
}

/// An error that ends the command with a specific exit code (others exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// The exit code.
    pub exit: Exit,
    /// What to tell the user.
    pub message: String,
}

/// Shorthand for a setup error.
pub fn setup_error(message: impl Into<String>) -> anyhow::Error {
    CommandError { exit: Exit::Setup, message: message.into() }.into()
}
