//! Output files, derived from the store: `OUT.jsonl` (results) and `OUT.errors.jsonl` (failed jobs, bad lines).
//!
//! Each file holds exactly the committed records of its kind, in commit order. On start the files are
//! reconciled with the store: a torn last line is dropped, complete lines are counted, and what the store has
//! beyond them is appended. The same rule serves resume and `export`, so a kill -9 at any moment costs nothing.

mod records;

pub use records::{answer_output, render_done, render_error, Format};

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::store::{CommittedSink, DoneRow, ErrorRow, Store, StoreError};

/// `OUT.jsonl` → `OUT.errors.jsonl`; any other name gets `.errors.jsonl` appended.
pub fn errors_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.errors.jsonl"))
}

/// Bytes of lines buffered before they are written out, at the latest (a group's are written when it is flushed).
const APPEND_BUFFER: usize = 1 << 20;

/// The two output files of a run, open for appending.
pub struct OutputFiles {
    done: Appender,
    errors: Appender,
    format: Format,
}

/// One output file, appended to in whole lines: a write that fails (a full disk) is cut back to the last whole
/// line, so the file never holds half a record, even before the next start repairs it.
struct Appender {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// The file's length after the last write that succeeded.
    whole: u64,
}

impl Appender {
    fn new(mut file: File, path: &Path) -> io::Result<Appender> {
        let whole = file.seek(SeekFrom::End(0))?;
        Ok(Appender { file, path: path.to_owned(), buf: Vec::new(), whole })
    }

    fn line(&mut self, line: &str) -> io::Result<()> {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        if self.buf.len() >= APPEND_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // Cut what was written of the failed lines; the lines stay in the store, and the next start writes
            // them.
            self.buf.clear();
            let _ = self.file.set_len(self.whole).and_then(|_| self.file.seek(SeekFrom::Start(self.whole)));
            return Err(naming(&self.path, "write", e));
        }
        self.whole += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl OutputFiles {
    /// Opens both files and brings them in line with the store. With `rebuild`, they are rewritten from scratch
    /// (the format changed, or jobs were reopened).
    pub fn open(out: &Path, store: &Store, format: Format, rebuild: bool) -> Result<OutputFiles, StoreError> {
        let mut done = open_repaired(out, rebuild).map_err(|e| naming(out, "open the output", e))?;
        let errors_out = errors_path(out);
        let mut errors = open_repaired(&errors_out, rebuild).map_err(|e| naming(&errors_out, "open the output", e))?;
        let done_have = count_lines(&mut done)?;
        let errors_have = count_lines(&mut errors)?;
        if done_have as i64 > store.next_done_ord()? || errors_have as i64 > store.next_error_ord()? {
            // The files hold more than the store: they belong to another run. Rebuild rather than mix.
            return OutputFiles::open(out, store, format, true);
        }
        let mut files = OutputFiles {
            done: Appender::new(done, out).map_err(|e| naming(out, "open the output", e))?,
            errors: Appender::new(errors, &errors_out).map_err(|e| naming(&errors_out, "open the output", e))?,
            format,
        };
        store.for_each_done(done_have as i64, |row| files.done.line(&render_done(&row, format)))?;
        store.for_each_error(errors_have as i64, |row| files.errors.line(&render_error(&row, format)))?;
        files.flush()?;
        Ok(files)
    }

    /// Creates both files empty (a shared run's local copy, which is written from the start of the run's
    /// commit order).
    pub fn create(out: &Path, format: Format) -> Result<OutputFiles, StoreError> {
        let errors_out = errors_path(out);
        let open = |path: &Path| -> io::Result<Appender> {
            let file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
            Appender::new(file, path)
        };
        Ok(OutputFiles {
            done: open(out).map_err(|e| naming(out, "open the output", e))?,
            errors: open(&errors_out).map_err(|e| naming(&errors_out, "open the output", e))?,
            format,
        })
    }

    /// Pushes buffered lines to the OS (a killed process then loses nothing that was written).
    pub fn flush(&mut self) -> io::Result<()> {
        self.done.flush()?;
        self.errors.flush()
    }
}

/// The store's writer appends each committed group here.
impl CommittedSink for OutputFiles {
    fn write_done(&mut self, row: &DoneRow) -> io::Result<()> {
        self.done.line(&render_done(row, self.format))
    }

    fn write_error(&mut self, row: &ErrorRow) -> io::Result<()> {
        self.errors.line(&render_error(row, self.format))
    }

    fn flush(&mut self) -> io::Result<()> {
        OutputFiles::flush(self)
    }
}

/// Writes both files for `store` at `out` from scratch, through temporary files renamed into place, so a reader
/// never sees a half-written export.
pub fn export(store: &Store, out: &Path, format: Format) -> Result<(u64, u64), StoreError> {
    export_from(out, format, |row| store.for_each_done(0, row), |row| store.for_each_error(0, row))
}

/// [`export`] from any source: `done` hands each result in commit order to the function it is given, `errors`
/// each error record.
pub fn export_from(
    out: &Path,
    format: Format,
    done: impl FnOnce(&mut dyn FnMut(DoneRow) -> io::Result<()>) -> Result<(), StoreError>,
    errors: impl FnOnce(&mut dyn FnMut(ErrorRow) -> io::Result<()>) -> Result<(), StoreError>,
) -> Result<(u64, u64), StoreError> {
    let done = write_replacing(out, |line| done(&mut |row| line(&render_done(&row, format))))?;
    let errors = write_replacing(&errors_path(out), |line| errors(&mut |row| line(&render_error(&row, format))))?;
    Ok((done, errors))
}

/// Writes `path` through a temporary file beside it, synced and renamed into place: `fill` hands each line to
/// the writer it is given. Returns how many lines it wrote.
fn write_replacing(
    path: &Path,
    fill: impl FnOnce(&mut dyn FnMut(&str) -> io::Result<()>) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut w = BufWriter::new(File::create(&tmp).map_err(|e| naming(&tmp, "create", e))?);
    let mut n = 0u64;
    fill(&mut |line| {
        n += 1;
        writeln!(w, "{line}")
    })?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(n)
}

/// An I/O error that says what inflight was doing, and to which file: the OS's own message names neither.
fn naming(path: &Path, doing: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {doing} {}: {e}", path.display()))
}

fn open_repaired(path: &Path, truncate: bool) -> io::Result<File> {
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(truncate).open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(f);
    }
    // Find the last newline, reading backwards in blocks; everything after it is a torn line.
    let mut end = len;
    let mut keep = 0;
    let mut buf = vec![0u8; 64 * 1024];
    'scan: while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break 'scan;
        }
        end = start;
    }
    if keep < len {
        f.set_len(keep)?;
    }
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

fn count_lines(f: &mut File) -> io::Result<u64> {
    f.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let read = f.read(&mut buf)?;
        if read == 0 {
            break;
        }
        n += buf[..read].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    f.seek(SeekFrom::End(0))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_path_replaces_jsonl() {
        assert_eq!(errors_path(Path::new("/a/out.jsonl")), Path::new("/a/out.errors.jsonl"));
        assert_eq!(errors_path(Path::new("res")), Path::new("res.errors.jsonl"));
    }

    #[test]
    fn torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"b\":2}\n{\"c\"").unwrap();
        let mut f = open_repaired(&p, false).unwrap();
        assert_eq!(count_lines(&mut f).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        std::fs::write(&p, "no newline at all").unwrap();
        let mut f = open_repaired(&p, false).unwrap();
        assert_eq!(count_lines(&mut f).unwrap(), 0);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    }
}

#[cfg(test)]
mod append_tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_only_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.jsonl");
        std::fs::write(&p, "{\"a\":1}\n").unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut a = Appender::new(file, &p).unwrap();
        a.line("{\"b\":2}").unwrap();
        a.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        // A failing write (here: a read-only descriptor) is cut back to the last whole line and names the file.
        let file = OpenOptions::new().read(true).open(&p).unwrap();
        let mut a = Appender::new(file, &p).unwrap();
        a.line("{\"c\":3}").unwrap();
        let e = a.flush().unwrap_err();
        assert!(e.to_string().contains("o.jsonl"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
    }
}
