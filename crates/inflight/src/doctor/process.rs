//! The server's own process, when it runs on this host: found by its listening port, read for its settings.
//!
//! llama-server does not report its thread count over HTTP, and Ollama reports none of its environment, so
//! for a server on loopback doctor follows the socket to the process (`/proc/net/tcp` gives the listening
//! socket's inode, `/proc/PID/fd` the process holding it) and reads its command line and, where permissions
//! allow, its environment. Everything learnt this way is labelled with where it came from.

use std::path::Path;

use serde::Serialize;

/// What the server process says about its settings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessFacts {
    /// Process id.
    pub pid: u32,
    /// Its command line.
    pub command: Vec<String>,
    /// Settings-related environment variables (`OLLAMA_*`, `LLAMA_ARG_*`), when the environment is readable.
    pub environment: Option<Vec<(String, String)>>,
}

/// Environment variable prefixes that configure the servers doctor knows.
const SETTING_PREFIXES: &[&str] = &["OLLAMA_", "LLAMA_ARG_", "VLLM_"];

/// Finds the process listening on `port` and reads it; `None` when no readable process holds the socket.
pub fn find_listener(port: u16) -> Option<ProcessFacts> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if holds_socket(&entry.path(), &targets) {
            return Some(read_process(pid, &entry.path()));
        }
    }
    None
}

fn holds_socket(proc_dir: &Path, targets: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|link| targets.iter().any(|t| link.as_os_str() == t.as_str()))
    })
}

fn read_process(pid: u32, dir: &Path) -> ProcessFacts {
    let split = |bytes: Vec<u8>| -> Vec<String> {
        bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
    };
    let command = std::fs::read(dir.join("cmdline")).map(split).unwrap_or_default();
    let environment = std::fs::read(dir.join("environ")).ok().map(|b| settings_of(split(b)));
    ProcessFacts { pid, command, environment }
}

/// The server-setting variables of `KEY=VALUE` strings.
pub fn settings_of(vars: impl IntoIterator<Item = String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .filter(|(k, _)| SETTING_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    out.sort();
    out
}

/// Inodes of sockets listening (state `0A`) on `port` in a `/proc/net/tcp` or `tcp6` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            (local_port == want && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

impl ProcessFacts {
    /// The value of the first of `flags` on the command line (`-t 4`, `--threads=4`).
    pub fn flag(&self, flags: &[&str]) -> Option<&str> {
        let mut args = self.command.iter();
        while let Some(a) = args.next() {
            if flags.contains(&a.as_str()) {
                return args.next().map(String::as_str);
            }
            if let Some((k, v)) = a.split_once('=') {
                if flags.contains(&k) {
                    return Some(v);
                }
            }
        }
        None
    }

    /// A setting variable of the process's environment, when readable and set.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.environment.as_ref()?.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The executable's file name (`llama-server`, `ollama`).
    pub fn program(&self) -> &str {
        self.command.first().map(|p| p.rsplit('/').next().unwrap_or(p)).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A76B 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5551 1 0 100 0 0 10 0
   1: 0100007F:A76B 0100007F:D2A0 01 00000000:00000000 00:00000000 00000000  1000        0 6000 1 0 20 4 30 10 -1
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7777 1 0 100 0 0 10 0";

    #[test]
    fn finds_the_listening_socket_of_a_port() {
        assert_eq!(listening_inodes(TCP, 0xA76B), vec![5551], "the established connection is not a listener");
        assert_eq!(listening_inodes(TCP, 8080), vec![7777]);
        assert!(listening_inodes(TCP, 11434).is_empty());
    }

    #[test]
    fn reads_flags_in_both_spellings_and_setting_variables() {
        let p = ProcessFacts {
            pid: 1,
            command: ["/opt/bin/llama-server", "-m", "x.gguf", "-np", "4", "--threads=3"].map(String::from).to_vec(),
            environment: Some(settings_of(["PATH=/bin".to_owned(), "OLLAMA_NUM_THREAD=8".to_owned()])),
        };
        assert_eq!(p.flag(&["-t", "--threads"]), Some("3"));
        assert_eq!(p.flag(&["-np", "--parallel"]), Some("4"));
        assert_eq!(p.flag(&["-c", "--ctx-size"]), None);
        assert_eq!(p.env("OLLAMA_NUM_THREAD"), Some("8"));
        assert_eq!(p.environment.as_ref().map(Vec::len), Some(1), "only server settings are kept");
        assert_eq!(p.program(), "llama-server");
    }
}
