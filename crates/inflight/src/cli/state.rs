//! Where a run's state lives, and the lock that says a run is live on it.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// `OUT.jsonl` → `OUT.inflight.db`, beside the output.
pub fn default_state_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.inflight.db"))
}

fn lock_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Held while a run is live on a state file; released when dropped or when the process dies.
pub struct RunLock {
    _file: File,
}

/// Takes the state's lock, or says that another process holds it.
pub fn lock(state: &Path) -> anyhow::Result<RunLock> {
    let path = lock_path(state);
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| {
        super::common::setup_error(format!("cannot create the lock file {} beside the state: {e}", path.display()))
    })?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(super::common::setup_error(format!(
            "another inflight run is using {} (wait for it, stop it, or pass another --state)",
            state.display()
        ))),
        Err(TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Whether a live run holds the state's lock.
pub fn is_live(state: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(lock_path(state)) else { return false };
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

/// A state database and its WAL files.
fn state_files(state: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    ["", "-wal", "-shm"].into_iter().map(move |suffix| {
        let mut p = state.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    })
}

/// Deletes a state database and its WAL files (`--restart`).
pub fn remove_state(state: &Path) -> std::io::Result<()> {
    for p in state_files(state) {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a file whose directory is missing or not a directory, naming both, before a run makes any file: the
/// OS's "No such file or directory" says neither which path nor what inflight was doing.
pub fn check_dir_of(what: &str, file: &Path) -> anyhow::Result<()> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let why = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => format!("{} is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("the directory {} does not exist", dir.display()),
        Err(e) => format!("{}: {e}", dir.display()),
    };
    Err(super::common::setup_error(format!("cannot write {what} {}: {why}", file.display())))
}

/// The files a run is about to make (state, its WAL files and lock, the outputs) that do not exist yet, removed
/// again when it is dropped before [`Leftovers::keep`]: a run refused before it starts leaves nothing behind.
pub struct Leftovers {
    paths: Vec<PathBuf>,
}

impl Leftovers {
    /// The run's files for `state` and the outputs `outputs` that are absent now.
    pub fn absent(state: &Path, outputs: &[PathBuf]) -> Leftovers {
        let mut left = Leftovers { paths: Vec::new() };
        left.add_absent(state_files(state).chain([lock_path(state)]).chain(outputs.iter().cloned()));
        left
    }

    /// Adds the state's files, absent again after `--restart` removed the old state: the new one is this run's.
    pub fn add_state(&mut self, state: &Path) {
        self.add_absent(state_files(state));
    }

    fn add_absent(&mut self, paths: impl IntoIterator<Item = PathBuf>) {
        // `symlink_metadata`: a dangling link is something the user made, not ours to remove.
        let absent = paths.into_iter().filter(|p| std::fs::symlink_metadata(p).is_err());
        for p in absent {
            if !self.paths.contains(&p) {
                self.paths.push(p);
            }
        }
    }

    /// The run started: its files stay.
    pub fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_sits_beside_the_output() {
        assert_eq!(default_state_path(Path::new("/d/out.jsonl")), Path::new("/d/out.inflight.db"));
    }

    #[test]
    fn a_refused_run_removes_only_the_files_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let (state, out, old) = (dir.path().join("s.db"), dir.path().join("o.jsonl"), dir.path().join("old.jsonl"));
        std::fs::write(&old, "kept\n").unwrap();
        let left = Leftovers::absent(&state, &[out.clone(), old.clone()]);
        let held = lock(&state).unwrap();
        std::fs::write(&state, "").unwrap();
        std::fs::write(&out, "").unwrap();
        drop(left);
        drop(held);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["old.jsonl"]);
        let left = Leftovers::absent(&state, std::slice::from_ref(&out));
        std::fs::write(&out, "").unwrap();
        left.keep();
        assert!(out.exists(), "a run that started keeps its files");
    }

    #[test]
    fn a_missing_or_false_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/o.jsonl");
        let err = check_dir_of("the output", &missing).unwrap_err().to_string();
        let no = dir.path().join("no");
        assert_eq!(
            err,
            format!("cannot write the output {}: the directory {} does not exist", missing.display(), no.display())
        );
        std::fs::write(dir.path().join("f"), "").unwrap();
        let under_file = dir.path().join("f/o.jsonl");
        let err = check_dir_of("the output", &under_file).unwrap_err().to_string();
        assert!(err.ends_with(&format!("{} is not a directory", dir.path().join("f").display())), "{err}");
        assert!(check_dir_of("the output", Path::new("o.jsonl")).is_ok(), "a bare name is in the current directory");
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.db");
        let held = lock(&state).unwrap();
        assert!(is_live(&state));
        assert!(lock(&state).is_err());
        drop(held);
        assert!(!is_live(&state));
    }
}
