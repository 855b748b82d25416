//! The job-file flags `run`, `bench` and `doctor` share, and how they become a [`Parser`] and a
//! [`JobReader`]: one set of names, defaults and messages for the three commands.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{parse, setup_error};
use crate::job::{Job, JobFileError, JobReader, Parser, RequestDefaults, SampleError, TemplateFile};

/// `--max-line-bytes`' default (10 MiB), for commands that read job files without the flag (`serve`).
pub const DEFAULT_MAX_LINE_BYTES: u64 = 10_485_760;

/// How a command reads a job file: the template, the system message and the line cap.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Prompt template (Jinja syntax) rendered over each line's fields, e.g. `Extract claims: {{ segment }}`.
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// System message for prompt and template lines.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Longest accepted input line, in bytes.
    #[arg(long, default_value = "10485760", value_parser = parse::count)]
    pub max_line_bytes: u64,
}

impl JobArgs {
    /// The `--template`, read and compiled.
    pub fn template_file(&self) -> anyhow::Result<Option<TemplateFile>> {
        self.template.as_deref().map(TemplateFile::load).transpose().map_err(file_error)
    }

    /// A parser for `defaults` plus `--system` and `--template`.
    pub fn parser(&self, defaults: RequestDefaults) -> anyhow::Result<Parser> {
        let defaults = RequestDefaults { system: self.system.clone(), ..defaults };
        Ok(Parser::new(defaults, self.template_file()?.as_ref().map(TemplateFile::parts)))
    }

    /// Opens `path` (or `-`) for reading with `parser` under `--max-line-bytes`.
    pub fn open<'p>(&self, path: &Path, parser: &'p Parser) -> anyhow::Result<JobReader<'p, Box<dyn BufRead + Send>>> {
        JobReader::open(path, self.max_line_bytes, parser).map_err(file_error)
    }

    /// The first `limit` jobs of `path`, each bad line on the way printed as `run --dry-run` prints it.
    pub fn sample(&self, path: &Path, parser: &Parser, limit: usize) -> anyhow::Result<Vec<Job>> {
        self.open(path, parser)?.sample_some(limit, |bad| eprintln!("{bad}")).map_err(|e| match e {
            SampleError::Empty(e) => file_error(e),
            SampleError::Read(e) => e.into(),
        })
    }
}

/// Checks that the job file `path` (or `-`) opens, before a run makes any file (exit 2 naming it if not).
pub(super) fn check_input(path: &Path) -> anyhow::Result<()> {
    crate::job::check_input(path).map_err(file_error)
}

/// A job file or template that cannot be used is a setup error (exit 2), before anything is sent.
pub(super) fn file_error(e: JobFileError) -> anyhow::Error {
    setup_error(e.to_string())
}
