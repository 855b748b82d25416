//! Streaming line reader with a per-line byte limit.
//!
//! `BufRead::read_until` would buffer an arbitrarily long line before we could refuse it; this reader keeps at
//! most `max_line_bytes` of a line and skips the rest, so a 2 GB line without a newline costs no memory.

use std::io::{self, BufRead};

use sha2::{Digest, Sha256};

/// One line of input: its 1-based number and its bytes (without the newline), or its length if over the limit.
#[derive(Debug)]
pub enum RawLine {
    /// A line within the limit.
    Line(u64, Vec<u8>),
    /// A line over the limit: its number and its full length in bytes.
    TooLong(u64, u64),
}

/// Reads lines from any `BufRead`, enforcing a byte limit per line.
pub struct LineReader<R> {
    inner: R,
    max_line_bytes: usize,
    line_no: u64,
    /// Bytes consumed so far (for progress during ingest).
    pub bytes_read: u64,
    hasher: Sha256,
}

impl<R: BufRead> LineReader<R> {
    /// Wraps `inner`; lines longer than `max_line_bytes` are reported as [`RawLine::TooLong`].
    pub fn new(inner: R, max_line_bytes: usize) -> Self {
        LineReader { inner, max_line_bytes, line_no: 0, bytes_read: 0, hasher: Sha256::new() }
    }

    /// SHA-256 of every byte consumed so far: identifies the input (or the part of it already ingested).
    pub fn digest_so_far(&self) -> String {
        super::parse::hex(&self.hasher.clone().finalize())
    }

    /// Lines read so far.
    pub fn lines_read(&self) -> u64 {
        self.line_no
    }

    /// Skips the first `n` lines (already ingested by an earlier, interrupted run).
    pub fn skip_lines(&mut self, n: u64) -> io::Result<()> {
        while self.line_no < n {
            if self.next_line()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// The next line, or `None` at end of input. Empty lines (and a trailing `\r`) are dropped from the content,
    /// but still numbered, so line numbers match what an editor shows.
    pub fn next_line(&mut self) -> io::Result<Option<RawLine>> {
        let mut buf = Vec::new();
        let mut total: u64 = 0;
        let mut saw_any = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if !saw_any {
                    return Ok(None);
                }
                break;
            }
            saw_any = true;
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let content = if done { &chunk[..take - 1] } else { &chunk[..take] };
            total += content.len() as u64;
            if buf.len() <= self.max_line_bytes {
                let room = self.max_line_bytes + 1 - buf.len();
                buf.extend_from_slice(&content[..content.len().min(room)]);
            }
            self.hasher.update(&chunk[..take]);
            self.inner.consume(take);
            self.bytes_read += take as u64;
            if done {
                break;
            }
        }
        self.line_no += 1;
        if total > self.max_line_bytes as u64 {
            return Ok(Some(RawLine::TooLong(self.line_no, total)));
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(Some(RawLine::Line(self.line_no, buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &str, max: usize) -> Vec<String> {
        let mut r = LineReader::new(input.as_bytes(), max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(match l {
                RawLine::Line(n, b) => format!("{n}:{}", String::from_utf8(b).unwrap()),
                RawLine::TooLong(n, len) => format!("{n}:too long {len}"),
            });
        }
        out
    }

    #[test]
    fn numbers_lines_and_handles_missing_final_newline() {
        assert_eq!(lines("a\nbb\n\nc", 10), ["1:a", "2:bb", "3:", "4:c"]);
        assert_eq!(lines("a\r\n", 10), ["1:a"]);
        assert!(lines("", 10).is_empty());
    }

    #[test]
    fn reports_overlong_lines_without_stopping() {
        assert_eq!(lines("abc\nabcdefgh\nxy\n", 4), ["1:abc", "2:too long 8", "3:xy"]);
        assert_eq!(lines("abcd\n", 4), ["1:abcd"]);
    }

    #[test]
    fn digest_covers_consumed_bytes_only() {
        let mut a = LineReader::new("x\ny\n".as_bytes(), 10);
        let mut b = LineReader::new("x\nz\n".as_bytes(), 10);
        a.next_line().unwrap();
        b.next_line().unwrap();
        assert_eq!(a.digest_so_far(), b.digest_so_far());
        a.next_line().unwrap();
        b.next_line().unwrap();
        assert_ne!(a.digest_so_far(), b.digest_so_far());
    }

    #[test]
    fn skip_lines_resumes_numbering() {
        let mut r = LineReader::new("a\nb\nc\n".as_bytes(), 10);
        r.skip_lines(2).unwrap();
        match r.next_line().unwrap() {
            Some(RawLine::Line(3, b)) => assert_eq!(b, b"c"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
