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
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(lock_path(state))?;
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

/// Deletes a state database and its WAL files (`--restart`).
pub fn remove_state(state: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = state.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(PathBuf::from(p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_sits_beside_the_output() {
        assert_eq!(default_state_path(Path::new("/d/out.jsonl")), Path::new("/d/out.inflight.db"));
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
