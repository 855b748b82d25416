//! Facts about the machine the engine sizes itself by: the CPU's physical cores (the ceiling for decode
//! threads: hyper-threads share a core's vector units, so a count above the physical cores only adds
//! contention) and the memory available.

use std::collections::BTreeSet;
use std::path::Path;

/// Physical cores this process may run on: distinct (package, core) pairs among the CPUs in its affinity
/// mask, read from sysfs; the logical count where sysfs says nothing.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let allowed = allowed_cpus().unwrap_or_else(|| (0..logical).collect());
    let pairs: Vec<Option<(u32, u32)>> =
        allowed.iter().map(|cpu| core_of(Path::new("/sys/devices/system/cpu"), *cpu)).collect();
    count_cores(&pairs).unwrap_or(logical).clamp(1, logical.max(1))
}

/// Distinct cores among the CPUs' (package, core) pairs; `None` if any CPU's pair is unknown.
fn count_cores(pairs: &[Option<(u32, u32)>]) -> Option<usize> {
    let known: Option<BTreeSet<(u32, u32)>> = pairs.iter().copied().collect();
    known.map(|set| set.len()).filter(|n| *n > 0)
}

fn core_of(sys: &Path, cpu: usize) -> Option<(u32, u32)> {
    let read = |name: &str| -> Option<u32> {
        std::fs::read_to_string(sys.join(format!("cpu{cpu}/topology/{name}"))).ok()?.trim().parse().ok()
    };
    Some((read("physical_package_id")?, read("core_id")?))
}

/// The CPUs in this process's affinity mask, from `/proc/self/status` (`Cpus_allowed_list: 0-3,8`).
fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list.trim())
}

fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Memory the system could give a new allocation now without swapping (`MemAvailable` in `/proc/meminfo`), in
/// bytes; `None` where the system does not say.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn hyper_threads_of_one_core_count_once() {
        // Four logical CPUs, two per core: two physical cores.
        let pairs = [Some((0, 0)), Some((0, 1)), Some((0, 0)), Some((0, 1))];
        assert_eq!(count_cores(&pairs), Some(2));
        // Two packages with the same core ids are different cores.
        assert_eq!(count_cores(&[Some((0, 0)), Some((1, 0))]), Some(2));
        // An unknown CPU makes the count unknown (the caller falls back to the logical count).
        assert_eq!(count_cores(&[Some((0, 0)), None]), None);
    }

    #[test]
    fn this_machine_has_at_least_one_core_and_no_more_than_its_logical_cpus() {
        let n = physical_cores();
        assert!(n >= 1 && n <= std::thread::available_parallelism().unwrap().get());
    }
}
