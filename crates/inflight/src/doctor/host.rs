//! The machine doctor runs on: physical and logical cores, memory, GPUs and load.
//!
//! Physical cores matter more than `nproc`: inference threads share a core's arithmetic units, so two threads
//! on one hyper-threaded core run little faster than one. The count comes from the kernel's CPU topology
//! (distinct package/core pairs), which also holds on machines whose `/proc/cpuinfo` has no `core id`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// What the host offers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostFacts {
    /// Physical cores (distinct package/core pairs), when the kernel tells.
    pub physical_cores: Option<usize>,
    /// Logical CPUs the OS schedules on.
    pub logical_cores: usize,
    /// Total memory, MiB.
    pub memory_total_mib: Option<u64>,
    /// Memory available for new work, MiB.
    pub memory_available_mib: Option<u64>,
    /// Load average over 1, 5 and 15 minutes.
    pub load_average: Option<[f64; 3]>,
    /// GPUs `nvidia-smi` lists (empty when it is absent).
    pub gpus: Vec<Gpu>,
}

/// One GPU as `nvidia-smi` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gpu {
    /// Product name.
    pub name: String,
    /// Memory, MiB.
    pub memory_total_mib: u64,
    /// Memory in use, MiB.
    pub memory_used_mib: u64,
    /// Utilization at the instant of the sample, percent (a sample, not an average).
    pub utilization_pct: u64,
}

/// Reads the host's facts; every part that cannot be read is left unknown rather than guessed.
pub fn gather() -> HostFacts {
    let logical_cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let physical_cores = physical_from_sysfs(Path::new("/sys/devices/system/cpu"))
        .or_else(|| std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| physical_from_cpuinfo(&t)));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    HostFacts {
        physical_cores,
        logical_cores,
        memory_total_mib: meminfo_mib(&meminfo, "MemTotal"),
        memory_available_mib: meminfo_mib(&meminfo, "MemAvailable"),
        load_average: std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| parse_loadavg(&t)),
        gpus: nvidia_gpus(),
    }
}

fn physical_from_sysfs(cpu_dir: &Path) -> Option<usize> {
    let mut cores = BTreeSet::new();
    for entry in std::fs::read_dir(cpu_dir).ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(entry.path().join("topology").join(f)).ok();
        if let (Some(package), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cores.insert((package.trim().to_owned(), core.trim().to_owned()));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Distinct (`physical id`, `core id`) pairs of `/proc/cpuinfo`, when it lists them.
pub fn physical_from_cpuinfo(text: &str) -> Option<usize> {
    let mut cores = BTreeSet::new();
    for block in text.split("\n\n") {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        if let Some(core) = field("core id") {
            cores.insert((field("physical id").unwrap_or_default(), core));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// A `/proc/meminfo` field in MiB.
pub fn meminfo_mib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn nvidia_gpus() -> Vec<Gpu> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total,memory.used,utilization.gpu", "--format=csv,noheader,nounits"])
        .output();
    match out {
        Ok(o) if o.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

/// Parses `nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv,noheader,nounits`.
pub fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let [name, total, used, util] = f.as_slice() else { return None };
            Some(Gpu {
                name: (*name).to_owned(),
                memory_total_mib: total.parse().ok()?,
                memory_used_mib: used.parse().ok()?,
                utilization_pct: util.parse().unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_physical_cores_not_hyperthreads() {
        let block = |cpu: u32, core: u32| format!("processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {core}\n");
        let text = [block(0, 0), block(1, 1), block(2, 0), block(3, 1)].join("\n");
        assert_eq!(physical_from_cpuinfo(&text), Some(2));
        assert_eq!(physical_from_cpuinfo("processor\t: 0\nmodel name\t: ARM\n"), None);
    }

    #[test]
    fn reads_memory_load_and_gpus() {
        let mem = "MemTotal:       24684084 kB\nMemFree:        1 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_mib(mem, "MemTotal"), Some(24105));
        assert_eq!(meminfo_mib(mem, "MemAvailable"), Some(2));
        assert_eq!(parse_loadavg("0.39 0.54 1.05 1/84 8417\n"), Some([0.39, 0.54, 1.05]));
        let gpus = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 1024, 0\nbad line\n");
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].memory_total_mib, 81559);
    }
}
