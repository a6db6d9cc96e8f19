//! CPU time and memory of this process, read from `/proc` (the workspace forbids
//! `unsafe`, so no `getrusage` call; the numbers are the same ones).
//!
//! - Process CPU: fields `utime` + `stime` of `/proc/self/stat`, which count every
//!   thread of the process, including threads that already exited (what
//!   `getrusage(RUSAGE_SELF)` returns).
//! - Per-thread CPU: `/proc/self/task/<tid>/stat`, grouped by thread name. Ferry's
//!   services run on their own runtimes with named threads (`exporter`, `importer`,
//!   `coordinator`), librdkafka names its threads `rdk:*`; see [`group_of`].
//! - Peak RSS: `VmHWM` of `/proc/self/status`, reset at the start of a phase by writing
//!   `5` to `/proc/self/clear_refs` (Linux ≥ 4.0), so each phase reports its own peak.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// Clock ticks per second of the `stat` files (`getconf CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(comm, utime + stime in seconds)` from the text of a `stat` file.
fn parse_stat(text: &str) -> Option<(String, f64)> {
    // The name is in parentheses and may itself hold spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the name: state(3) ppid ... utime is field 14, stime 15 (1-based overall).
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / ticks_per_second()))
}

/// CPU seconds used so far by process `pid` (every thread of it: the Debezium peer's
/// JVM).
pub fn pid_cpu(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&text)
        .map(|(_, s)| s)
        .with_context(|| format!("parsing {path}"))
}

/// Peak RSS in bytes of process `pid` (`VmHWM`).
pub fn pid_peak_rss(pid: u32) -> Result<u64> {
    vm_hwm(&format!("/proc/{pid}/status"))
}

/// CPU seconds used by the whole process so far.
pub fn process_cpu() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    parse_stat(&text)
        .map(|(_, s)| s)
        .context("parsing /proc/self/stat")
}

/// CPU seconds per live thread: tid -> (name, seconds).
pub fn threads() -> BTreeMap<u64, (String, f64)> {
    stat_files("/proc/self/task", None)
}

/// `(name, CPU seconds)` from `<dir>/<id>/stat` for every numeric entry of `dir`,
/// except `skip`.
fn stat_files(dir: &str, skip: Option<u64>) -> BTreeMap<u64, (String, f64)> {
    ferry_testkit::procs::stat_texts(dir)
        .into_iter()
        .filter(|(id, _)| Some(*id) != skip)
        .filter_map(|(id, text)| parse_stat(&text).map(|stat| (id, stat)))
        .collect()
}

/// The group a thread's CPU is reported under.
pub fn group_of(name: &str) -> String {
    if name.starts_with("rdk:") {
        // librdkafka names its threads alike in every client (`rdk:main`,
        // `rdk:broker<id>`), so they are grouped by name across clients.
        return format!("rdkafka {name} (all clients)");
    }
    for service in ["exporter", "importer", "coordinator"] {
        if name.starts_with(service) {
            return format!("{service} runtime (tokio workers + blocking)");
        }
    }
    if name.starts_with("ferry-importer") {
        return "importer consumer thread".into();
    }
    if name.starts_with("producer pollin") {
        return "exporter producer polling thread".into();
    }
    if name.starts_with("bench") || name == "ferry-bench" {
        return "bench (polling, not Ferry)".into();
    }
    name.to_owned()
}

/// Resets the peak RSS (`VmHWM`) to the current RSS.
pub fn reset_peak_rss() -> Result<()> {
    std::fs::write("/proc/self/clear_refs", "5").context("writing 5 to /proc/self/clear_refs")
}

/// Peak RSS in bytes since the last [`reset_peak_rss`] (or the start).
pub fn peak_rss() -> Result<u64> {
    vm_hwm("/proc/self/status")
}

/// `VmHWM` of a `status` file, bytes.
fn vm_hwm(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .with_context(|| format!("no VmHWM in {path}"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("parsing VmHWM")?;
    Ok(kb * 1024)
}

/// CPU seconds so far of every other process on the machine, by pid: (name, seconds).
fn other_processes() -> BTreeMap<u64, (String, f64)> {
    stat_files("/proc", Some(u64::from(std::process::id())))
}

/// Microseconds so far in which some runnable task of the machine waited for a core:
/// the "some" line's `total` of `/proc/pressure/cpu` (Linux ≥ 4.20 with PSI); `None`
/// where the file is missing.
fn cpu_pressure_us() -> Option<u64> {
    parse_pressure_some(&std::fs::read_to_string("/proc/pressure/cpu").ok()?)
}

/// `total` of the `some` line of a PSI file's text.
fn parse_pressure_some(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// A CPU reading taken at the start of a measured phase.
pub struct CpuMark {
    total: f64,
    threads: BTreeMap<u64, (String, f64)>,
    others: BTreeMap<u64, (String, f64)>,
    pressure: Option<u64>,
    started: std::time::Instant,
}

/// What a measured phase used.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Usage {
    /// CPU seconds of the whole process during the phase.
    pub cpu_seconds: f64,
    /// CPU seconds of the bench's own threads (polling; included in `cpu_seconds`).
    pub bench_cpu_seconds: f64,
    /// CPU seconds per thread group, largest first; "(exited threads)" is what the
    /// process total holds beyond the live threads.
    pub split: Vec<(String, f64)>,
    /// Peak RSS of the process during the phase, bytes.
    pub peak_rss_bytes: u64,
    /// Wall-clock seconds of the phase.
    pub wall_seconds: f64,
    /// CPU seconds of the other processes on the machine during the phase, by process
    /// name (PostgreSQL, the broker, ...), largest first; processes that started and
    /// ended inside the phase are not seen.
    pub machine: Vec<(String, f64)>,
    /// Share of the phase's wall time in which some runnable task of the machine waited
    /// for a core (`/proc/pressure/cpu`, "some"); `None` without PSI.
    pub cpu_waiting: Option<f64>,
}

impl CpuMark {
    /// Resets the peak RSS and takes a CPU reading.
    pub fn start() -> Result<CpuMark> {
        reset_peak_rss()?;
        Ok(CpuMark {
            total: process_cpu()?,
            threads: threads(),
            others: other_processes(),
            pressure: cpu_pressure_us(),
            started: std::time::Instant::now(),
        })
    }

    /// What was used since [`CpuMark::start`].
    pub fn finish(&self) -> Result<Usage> {
        let total = process_cpu()? - self.total;
        let peak = peak_rss()?;
        let mut groups: BTreeMap<String, f64> = BTreeMap::new();
        let mut live = 0.0;
        for (tid, (name, secs)) in threads() {
            let before = self.threads.get(&tid).map_or(0.0, |(_, s)| *s);
            let d = secs - before;
            live += d;
            *groups.entry(group_of(&name)).or_default() += d;
        }
        let exited = total - live;
        if exited > 0.005 {
            groups.insert("(threads that exited during the phase)".into(), exited);
        }
        let bench = groups
            .get("bench (polling, not Ferry)")
            .copied()
            .unwrap_or(0.0);
        let mut split: Vec<(String, f64)> =
            groups.into_iter().filter(|(_, s)| *s >= 0.005).collect();
        split.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (name, secs)) in other_processes() {
            let before = self.others.get(&pid).map_or(0.0, |(_, s)| *s);
            *by_name.entry(name).or_default() += secs - before;
        }
        let mut machine: Vec<(String, f64)> =
            by_name.into_iter().filter(|(_, s)| *s >= 0.05).collect();
        machine.sort_by(|a, b| b.1.total_cmp(&a.1));
        let wall_seconds = self.started.elapsed().as_secs_f64();
        let cpu_waiting = match (self.pressure, cpu_pressure_us()) {
            (Some(before), Some(after)) => {
                Some(after.saturating_sub(before) as f64 / 1e6 / wall_seconds.max(1e-9))
            }
            _ => None,
        };
        Ok(Usage {
            cpu_seconds: total,
            bench_cpu_seconds: bench,
            split,
            peak_rss_bytes: peak,
            wall_seconds,
            machine,
            cpu_waiting,
        })
    }
}

impl Usage {
    /// CPU seconds of Ferry's services: the process total minus the bench's own threads.
    pub fn ferry_cpu_seconds(&self) -> f64 {
        (self.cpu_seconds - self.bench_cpu_seconds).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_strange_name() {
        let text = "123 (rdk:broker (1)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100";
        let (name, secs) = parse_stat(text).unwrap_or_default();
        assert_eq!(name, "rdk:broker (1)");
        assert!((secs - 300.0 / ticks_per_second()).abs() < 1e-9);
    }

    #[test]
    fn reads_the_some_total_of_a_pressure_file() {
        let text = "some avg10=2.28 avg60=24.24 avg300=26.94 total=5779499314\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure_some(text), Some(5_779_499_314));
        assert_eq!(parse_pressure_some("full avg10=0.00 total=7\n"), None);
        assert_eq!(parse_pressure_some("some avg10=0.00\n"), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(process_cpu().is_ok());
        assert!(peak_rss().unwrap_or(0) > 0);
        assert!(!threads().is_empty());
    }
}
