//! Reading a job file: the one way `run` (ingest and `--dry-run`), `bench --jobs` and `doctor --jobs` open,
//! cap, parse and report their input.
//!
//! Before this reader each command had its own loop, and the same bad line got a different message (or none)
//! depending on which command read it; bench had no line cap of its own choosing and doctor no template. Now the
//! open error names the path, the `--max-line-bytes` cap is [`LineReader`]'s, every line goes through the
//! command's [`Parser`], and a bad line is one [`BadLine`] whose code and message are the same everywhere.

use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{BadLine, Job, LineReader, Parser, RawLine, Template, TemplateError};
use crate::code::ErrorCode;

/// The path that means standard input.
const STDIN: &str = "-";

/// Read buffer: large enough that a multi-megabyte line is a few reads, small next to the line cap.
const BUFFER_BYTES: usize = 1 << 20;

/// A job file or template that cannot be used at all (as opposed to a bad line, which is reported and skipped).
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    /// The job file cannot be opened.
    #[error("cannot read {path}: {source}")]
    Open {
        /// The file, as given.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The template file cannot be read.
    #[error("cannot read template {path}: {source}")]
    TemplateUnreadable {
        /// The file, as given.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The template does not compile.
    #[error("template {path} does not compile: {source}")]
    TemplateInvalid {
        /// The file, as given.
        path: String,
        /// The compiler's message, with its line.
        source: TemplateError,
    },
    /// A sample found no line that becomes a job.
    #[error("no usable job lines in {path}")]
    NoJobs {
        /// The file, as given.
        path: String,
    },
}

/// A `--template FILE`, read and compiled once; every command that takes the flag loads it here.
#[derive(Clone)]
pub struct TemplateFile {
    path: PathBuf,
    source: String,
    template: Template,
}

impl fmt::Debug for TemplateFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemplateFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TemplateFile {
    /// Reads and compiles `path`.
    pub fn load(path: &Path) -> Result<TemplateFile, JobFileError> {
        let name = || path.display().to_string();
        let source = std::fs::read_to_string(path)
            .map_err(|source| JobFileError::TemplateUnreadable { path: name(), source })?;
        let template =
            Template::new(source.clone()).map_err(|source| JobFileError::TemplateInvalid { path: name(), source })?;
        Ok(TemplateFile { path: path.to_owned(), source, template })
    }

    /// The compiled template and its source text, as [`Parser::new`] takes them.
    pub fn parts(&self) -> (Template, String) {
        (self.template.clone(), self.source.clone())
    }
}

/// Opens a job file, or standard input for `-`.
fn open_input(path: &Path) -> Result<Box<dyn BufRead + Send>, JobFileError> {
    if path == Path::new(STDIN) {
        return Ok(Box::new(BufReader::with_capacity(BUFFER_BYTES, io::stdin())));
    }
    Ok(Box::new(BufReader::with_capacity(BUFFER_BYTES, open_file(path)?)))
}

/// Opens a job file. A directory opens on Linux and fails only at the first read, after a run has made its
/// files; it is refused here, with its name.
fn open_file(path: &Path) -> Result<std::fs::File, JobFileError> {
    let err = |source| JobFileError::Open { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    if file.metadata().map_err(err)?.is_dir() {
        return Err(err(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory")));
    }
    Ok(file)
}

/// Checks that the job file `path` (or `-`) opens, without reading it: a run checks its input before it makes
/// any file of its own.
pub fn check_input(path: &Path) -> Result<(), JobFileError> {
    if path == Path::new(STDIN) {
        return Ok(());
    }
    open_file(path).map(drop)
}

/// What one non-blank input line became.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A job to send.
    Job(Job),
    /// A line that cannot become one.
    Bad(BadLine),
}

/// Reads jobs from a file: lines capped by [`LineReader`], parsed by a [`Parser`].
pub struct JobReader<'p, R> {
    lines: LineReader<R>,
    parser: &'p Parser,
    /// Named in read errors: a failure mid-file (a directory given as the file, a dropped mount) says which.
    path: String,
}

impl<'p> JobReader<'p, Box<dyn BufRead + Send>> {
    /// Opens `path` (or `-`) with lines over `max_line_bytes` reported as `line_too_long`.
    pub fn open(path: &Path, max_line_bytes: u64, parser: &'p Parser) -> Result<Self, JobFileError> {
        let input = open_input(path)?;
        Ok(JobReader::new(input, path.display().to_string(), max_line_bytes, parser))
    }
}

impl<'p, R: BufRead> JobReader<'p, R> {
    /// Reads `input` (called `path` in messages).
    pub fn new(input: R, path: String, max_line_bytes: u64, parser: &'p Parser) -> Self {
        let cap = usize::try_from(max_line_bytes).unwrap_or(usize::MAX);
        JobReader { lines: LineReader::new(input, cap), parser, path }
    }

    /// The next job or bad line, skipping blank lines; `None` at the end of the input.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        loop {
            let parsed = match self.raw_line()? {
                None => return Ok(None),
                // Too long to parse, so no id can be read from it.
                Some(RawLine::TooLong(line, len)) => Err(BadLine::new(
                    line,
                    ErrorCode::LineTooLong,
                    format!("line is {len} bytes, over --max-line-bytes"),
                )),
                Some(RawLine::Line(line, bytes)) => self.parser.parse(line, &bytes),
            };
            match parsed {
                Ok(None) => continue,
                Ok(Some(job)) => return Ok(Some(Entry::Job(job))),
                Err(bad) => return Ok(Some(Entry::Bad(bad))),
            }
        }
    }

    /// The first `limit` jobs, reading no further than they need; each bad line on the way goes to `on_bad`
    /// (and is not sampled), so a sample costs memory for its jobs only, however large the file.
    pub fn sample(&mut self, limit: usize, mut on_bad: impl FnMut(&BadLine)) -> io::Result<Vec<Job>> {
        let mut jobs = Vec::new();
        while jobs.len() < limit {
            match self.next_entry()? {
                None => break,
                Some(Entry::Job(job)) => jobs.push(job),
                Some(Entry::Bad(bad)) => on_bad(&bad),
            }
        }
        Ok(jobs)
    }

    /// Like [`JobReader::sample`], but an empty sample is an error naming the file.
    pub fn sample_some(&mut self, limit: usize, on_bad: impl FnMut(&BadLine)) -> Result<Vec<Job>, SampleError> {
        let jobs = self.sample(limit, on_bad)?;
        if jobs.is_empty() {
            return Err(SampleError::Empty(JobFileError::NoJobs { path: self.path.clone() }));
        }
        Ok(jobs)
    }

    /// Lines read so far (blank and bad ones included).
    pub fn lines_read(&self) -> u64 {
        self.lines.lines_read()
    }

    /// SHA-256 of every byte read so far.
    pub fn digest_so_far(&self) -> String {
        self.lines.digest_so_far()
    }

    /// Skips the first `n` lines (already ingested by an earlier, interrupted run).
    pub fn skip_lines(&mut self, n: u64) -> io::Result<()> {
        self.lines.skip_lines(n).map_err(|e| self.read_error(e))
    }

    /// Whether the input has no line left, blank ones included: a resumed run's check that it did not grow.
    pub fn at_end(&mut self) -> io::Result<bool> {
        Ok(self.raw_line()?.is_none())
    }

    fn raw_line(&mut self) -> io::Result<Option<RawLine>> {
        self.lines.next_line().map_err(|e| self.read_error(e))
    }

    fn read_error(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("cannot read {}: {e}", self.path))
    }
}

/// Why a sample has no jobs: the file failed mid-read, or none of its lines is a job.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Reading failed (the message names the file).
    #[error(transparent)]
    Read(#[from] io::Error),
    /// No line became a job.
    #[error(transparent)]
    Empty(JobFileError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::RequestDefaults;

    const INPUT: &str =
        "{\"prompt\": \"a\"}\n{nope\n\n{\"prompt\": \"xxxxxxxxxxxxxxxxxxxxxxxx\"}\n{\"prompt\": \"b\"}\n";

    fn reader<'p>(parser: &'p Parser, cap: u64) -> JobReader<'p, &'static [u8]> {
        JobReader::new(INPUT.as_bytes(), "jobs.jsonl".into(), cap, parser)
    }

    fn entries(mut r: JobReader<'_, &[u8]>) -> Vec<Entry> {
        std::iter::from_fn(|| r.next_entry().unwrap()).collect()
    }

    #[test]
    fn bad_lines_are_the_same_whether_read_whole_or_sampled() {
        let parser = Parser::new(RequestDefaults::default(), None);
        let whole: Vec<BadLine> = entries(reader(&parser, 30))
            .into_iter()
            .filter_map(|e| match e {
                Entry::Bad(b) => Some(b),
                Entry::Job(_) => None,
            })
            .collect();
        let mut sampled = Vec::new();
        let jobs = reader(&parser, 30).sample(10, |b| sampled.push(b.clone())).unwrap();
        assert_eq!(whole, sampled);
        assert_eq!(jobs.iter().map(|j| j.line).collect::<Vec<_>>(), [1, 5], "blank line 3 is no job");
        assert_eq!((whole[0].line, whole[0].code), (2, ErrorCode::InvalidJson));
        assert_eq!(whole[1].to_string(), "line 4: line_too_long (line is 38 bytes, over --max-line-bytes)");
    }

    #[test]
    fn the_cap_applies_and_a_sample_reads_no_further_than_it_needs() {
        let parser = Parser::new(RequestDefaults::default(), None);
        let all = entries(reader(&parser, 1 << 20));
        assert_eq!(all.iter().filter(|e| matches!(e, Entry::Job(_))).count(), 3, "no cap hit: {all:?}");
        let mut r = reader(&parser, 1 << 20);
        assert_eq!(r.sample(1, |_| panic!("no bad line before the first job")).unwrap().len(), 1);
        assert_eq!(r.lines_read(), 1);
        assert!(!r.at_end().unwrap());
    }

    #[test]
    fn an_empty_sample_names_the_file() {
        let parser = Parser::new(RequestDefaults::default(), None);
        let mut r = JobReader::new("{nope\n".as_bytes(), "jobs.jsonl".into(), 100, &parser);
        let mut bad = 0;
        let err = r.sample_some(5, |_| bad += 1).unwrap_err();
        assert_eq!((err.to_string(), bad), ("no usable job lines in jobs.jsonl".into(), 1));
    }

    #[test]
    fn a_missing_file_or_template_names_the_path() {
        let parser = Parser::new(RequestDefaults::default(), None);
        let missing = Path::new("/nonexistent/jobs.jsonl");
        let err = JobReader::open(missing, 100, &parser).err().unwrap().to_string();
        assert!(err.starts_with("cannot read /nonexistent/jobs.jsonl: "), "{err}");
        assert_eq!(check_input(missing).unwrap_err().to_string(), err);
        let dir = tempfile::tempdir().unwrap();
        let err = check_input(dir.path()).unwrap_err().to_string();
        assert_eq!(err, format!("cannot read {}: it is a directory", dir.path().display()));
        let err = TemplateFile::load(Path::new("/nonexistent/t.j2")).unwrap_err().to_string();
        assert!(err.starts_with("cannot read template /nonexistent/t.j2: "), "{err}");
    }

    #[test]
    fn a_bad_template_is_refused_once_with_its_path() {
        let dir = std::env::temp_dir().join(format!("inflight-jobfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (bad, good) = (dir.join("bad.j2"), dir.join("good.j2"));
        std::fs::write(&bad, "{{ x ").unwrap();
        std::fs::write(&good, "Say {{ x }}").unwrap();
        let err = TemplateFile::load(&bad).unwrap_err().to_string();
        assert!(err.starts_with(&format!("template {} does not compile: ", bad.display())), "{err}");
        let parser = Parser::new(RequestDefaults::default(), Some(TemplateFile::load(&good).unwrap().parts()));
        let mut r = JobReader::new("{\"x\": \"hi\"}\n".as_bytes(), "j".into(), 100, &parser);
        let job = r.sample(1, |b| panic!("{b}")).unwrap().remove(0);
        assert!(job.body.contains("Say hi"), "{}", job.body);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
