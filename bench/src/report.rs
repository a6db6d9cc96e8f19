//! The result table: each figure with its same-run reference, the ratio, the target
//! and PASS/MISS; and the same as JSON.

use serde::Serialize;

use crate::cutover::CutoverResult;
use crate::debezium::{PeerRun, DEBEZIUM_VERSION};
use crate::phases::{CdcResult, Exported, SingleResult, SnapshotPeer, SnapshotResult};
use crate::replay::ReplayResult;
use crate::status::StatusResult;
use crate::usage::Usage;

/// One line of the table.
#[derive(Debug, Serialize)]
pub struct Line {
    pub figure: String,
    pub ferry: String,
    pub reference: String,
    pub ratio: Option<f64>,
    pub target: String,
    /// `None`: informational, no target.
    pub pass: Option<bool>,
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub snapshot: Option<SnapshotResult>,
    pub cdc: Option<CdcResult>,
    pub single: Option<SingleResult>,
    pub status: Option<StatusResult>,
    pub cutover: Option<CutoverResult>,
    pub replay: Option<ReplayResult>,
    pub lines: Vec<Line>,
    /// Phases that failed, with the reason; any entry fails the run.
    pub errors: Vec<String>,
}

/// Where the run ran.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    /// Cores, memory and the load average now.
    pub fn now() -> Machine {
        let memory_kb: f64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kb / 1024.0 / 1024.0,
            load_before: load_average(),
            load_after: String::new(),
        }
    }
}

/// The first three fields of /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k/s", v / 1e3)
    } else {
        format!("{v:.0} /s")
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

// Issue #19's targets on Apache Kafka, 2 cores with everything on the box.
/// Snapshot end to end against the COPY pipe.
const MIN_SNAPSHOT_RATIO: f64 = 0.50;
/// Batched CDC end to end against pg_recvlogical.
const MIN_CDC_RATIO: f64 = 0.60;
const MAX_CPU_US_PER_ROW: f64 = 2.5;
/// Exporter + importer (+ coordinator, measured with them).
const MAX_RSS: u64 = 512 << 20;
/// Single-row transactions: applied against offered.
const MIN_SINGLE_KEEP_UP: f64 = 0.98;
const MAX_P99_MS: f64 = 250.0;
/// Ferry's source half into Kafka against Debezium's (issue #19).
const MIN_PEER_RATIO: f64 = 3.0;

fn dbz() -> String {
    format!("Debezium {DEBEZIUM_VERSION}")
}

/// The peer's rate once running (what the ratio uses), and from its launch.
fn peer_rate(d: &PeerRun) -> String {
    format!(
        "{} {} once running ({} from launch, first record after {:.1} s)",
        dbz(),
        rate(d.running_records_per_second),
        rate(d.records_per_second),
        d.first_record_seconds
    )
}

/// Ferry's exporter's rate into Kafka once running (what the ratio uses, as for the
/// peer), and from its launch.
fn ferry_export_rate(e: &Exported, n: i64) -> String {
    format!(
        "exporter {} once running ({} from launch, first record after {:.1} s)",
        rate(e.rate_once_running(n)),
        rate(e.rate_from_launch(n)),
        e.first_seconds
    )
}

impl Report {
    fn line(
        &mut self,
        figure: &str,
        ferry: String,
        reference: String,
        ratio: Option<f64>,
        target: &str,
        pass: Option<bool>,
    ) {
        self.lines.push(Line {
            figure: figure.to_owned(),
            ferry,
            reference,
            ratio,
            target: target.to_owned(),
            pass,
        });
    }

    fn usage_lines(
        &mut self,
        phase: &str,
        usage: &Usage,
        units: f64,
        unit: &str,
        cpu_target: bool,
    ) {
        let us = usage.ferry_cpu_seconds() * 1e6 / units.max(1.0);
        self.line(
            &format!("{phase}: Ferry CPU per {unit}"),
            // µs per unit is also CPU seconds per million units.
            format!("{us:.2} µs (= {us:.1} s per M)"),
            format!(
                "{:.1} CPU s in {units:.0} {unit}s",
                usage.ferry_cpu_seconds()
            ),
            None,
            if cpu_target { "≤ 2.5 µs" } else { "" },
            cpu_target.then_some(us <= MAX_CPU_US_PER_ROW),
        );
        self.line(
            &format!("{phase}: peak RSS (exporter+importer+coordinator)"),
            mib(usage.peak_rss_bytes),
            String::new(),
            None,
            "≤ 512 MiB",
            Some(usage.peak_rss_bytes <= MAX_RSS),
        );
    }

    /// The snapshot's source half against the Debezium peer.
    fn snapshot_peer_lines(&mut self, rows: i64, p: &SnapshotPeer) {
        let d = &p.debezium;
        let ratio = p.ferry_export_running_rows_per_second / d.running_records_per_second;
        self.line(
            &format!("snapshot into Kafka: rows/s, source half ({rows} rows)"),
            format!("alone, {}", ferry_export_rate(&p.ferry_export, rows)),
            peer_rate(d),
            Some(ratio),
            "ratio ≥ 3",
            Some(ratio >= MIN_PEER_RATIO),
        );
        self.peer_cpu_line(
            "snapshot into Kafka: CPU per row, source half",
            p.ferry_export_usage.ferry_cpu_seconds(),
            "exporter",
            d,
            "row",
        );
        self.peer_count_line("snapshot", d, "rows");
    }

    fn peer_cpu_line(
        &mut self,
        figure: &str,
        ferry_cpu: f64,
        ferry_what: &str,
        d: &PeerRun,
        unit: &str,
    ) {
        let n = d.expected.max(1) as f64;
        let (f, j) = (ferry_cpu * 1e6 / n, d.jvm_cpu_seconds * 1e6 / n);
        self.line(
            figure,
            format!("{ferry_what} {f:.2} µs"),
            format!(
                "Debezium JVM {j:.2} µs per {unit} ({:.1} CPU s; {:.2} µs once running; peak RSS {})",
                d.jvm_cpu_seconds,
                d.jvm_running_cpu_seconds * 1e6 / n,
                mib(d.jvm_peak_rss_bytes)
            ),
            Some(f / j.max(1e-9)),
            "",
            None,
        );
    }

    fn peer_count_line(&mut self, phase: &str, d: &PeerRun, what: &str) {
        self.line(
            &format!("{phase}: Debezium's records in Kafka"),
            format!("{} {what}", d.expected),
            format!("{} records in its topic", d.records),
            None,
            "equal",
            Some(d.records == d.expected),
        );
    }

    /// Builds the table lines from the phase results.
    pub fn build_lines(&mut self) {
        if let Some(s) = self.snapshot.take() {
            if let Some(st) = &s.staged {
                self.line(
                    &format!("snapshot staged: exporter alone ({} rows)", s.rows),
                    rate(st.export_rows_per_second),
                    format!("COPY binary pipe {}", rate(s.copy_rows_per_second)),
                    Some(st.export_rows_per_second / s.copy_rows_per_second),
                    "",
                    None,
                );
                self.usage_lines(
                    "snapshot staged, exporter",
                    &st.export_usage,
                    s.rows as f64,
                    "row",
                    false,
                );
                self.line(
                    &format!("snapshot staged: importer alone ({} rows)", s.rows),
                    rate(st.import_rows_per_second),
                    format!("COPY binary pipe {}", rate(s.copy_rows_per_second)),
                    Some(st.import_rows_per_second / s.copy_rows_per_second),
                    "",
                    None,
                );
                self.usage_lines(
                    "snapshot staged, importer",
                    &st.import_usage,
                    s.rows as f64,
                    "row",
                    false,
                );
                self.line(
                    "snapshot: count + checksum equal",
                    format!("{} rows", s.checksum.rows),
                    "source = target".into(),
                    None,
                    "equal",
                    Some(true),
                );
                if let Some(p) = &s.peer {
                    self.snapshot_peer_lines(s.rows, p);
                }
                self.snapshot = Some(s);
                return self.rest_lines();
            }
            let ratio = s.ferry_rows_per_second / s.copy_rows_per_second;
            self.line(
                &format!("snapshot: rows/s end to end ({} rows)", s.rows),
                rate(s.ferry_rows_per_second),
                format!("COPY binary pipe {}", rate(s.copy_rows_per_second)),
                Some(ratio),
                "ratio ≥ 0.50",
                Some(ratio >= MIN_SNAPSHOT_RATIO),
            );
            self.usage_lines("snapshot", &s.usage, s.rows as f64, "row", true);
            self.line(
                "snapshot: count + checksum equal",
                format!("{} rows", s.checksum.rows),
                "source = target".into(),
                None,
                "equal",
                Some(true),
            );
            if let Some(p) = &s.peer {
                self.snapshot_peer_lines(s.rows, p);
            }
            self.snapshot = Some(s);
        }
        self.rest_lines();
    }

    fn rest_lines(&mut self) {
        if let Some(c) = self.cdc.take() {
            let ratio = c.ferry_events_per_second / c.recvlogical_events_per_second;
            self.line(
                &format!("cdc 100-row txns: rows/s ({} changes)", c.events),
                rate(c.ferry_events_per_second),
                format!("pg_recvlogical {}", rate(c.recvlogical_events_per_second)),
                Some(ratio),
                "ratio ≥ 0.60",
                Some(ratio >= MIN_CDC_RATIO),
            );
            self.usage_lines("cdc", &c.usage, c.events as f64, "change", false);
            self.line(
                "cdc: count + checksum equal",
                format!("{} rows", c.checksum.rows),
                "source = target".into(),
                None,
                "equal",
                Some(true),
            );
            if let Some(d) = &c.peer {
                // The exporter alone on the second backlog when it ran (as Debezium
                // runs), else beside the importer in the end-to-end drain.
                let (export, alone) = match c.ferry_export_alone {
                    Some(e) => (Some(e), "alone, "),
                    None => (c.ferry_export, "beside the importer, "),
                };
                match export {
                    Some(e) => {
                        let ferry = e.rate_once_running(c.events);
                        let ratio = ferry / d.running_records_per_second;
                        self.line(
                            &format!(
                                "cdc into Kafka: changes/s, source half ({} changes)",
                                c.events
                            ),
                            format!("{alone}{}", ferry_export_rate(&e, c.events)),
                            peer_rate(d),
                            Some(ratio),
                            "ratio ≥ 3",
                            Some(ratio >= MIN_PEER_RATIO),
                        );
                    }
                    None => self.line(
                        "cdc into Kafka: changes/s, source half",
                        "not measured (the topic watcher timed out)".into(),
                        peer_rate(d),
                        None,
                        "ratio ≥ 3",
                        Some(false),
                    ),
                }
                match &c.ferry_export_alone_usage {
                    Some(u) => self.peer_cpu_line(
                        "cdc into Kafka: CPU per change, source half",
                        u.ferry_cpu_seconds(),
                        "exporter alone",
                        d,
                        "change",
                    ),
                    None => self.peer_cpu_line(
                        "cdc into Kafka: CPU per change (Ferry: both halves)",
                        c.usage.ferry_cpu_seconds(),
                        "exporter+importer",
                        d,
                        "change",
                    ),
                }
                self.peer_count_line("cdc", d, "changes");
            }
            self.cdc = Some(c);
        }
        if let Some(s) = self.single.take() {
            self.line(
                &format!("single-row txns: events/s ({} events)", s.events),
                rate(s.ferry_events_per_second),
                format!(
                    "source committed {}; pg_recvlogical {}",
                    rate(s.source_events_per_second),
                    rate(s.recvlogical_events_per_second)
                ),
                Some(s.ferry_events_per_second / s.offered_rate.max(1.0)),
                "≥ 0.98 × offered",
                Some(s.ferry_events_per_second >= MIN_SINGLE_KEEP_UP * s.offered_rate),
            );
            self.line(
                "single-row txns: commit-to-commit p50 / p99",
                format!("{:.0} / {:.0} ms", s.latency_p50_ms, s.latency_p99_ms),
                format!("max {:.0} ms", s.latency_max_ms),
                None,
                "p99 ≤ 250 ms",
                Some(s.latency_p99_ms <= MAX_P99_MS),
            );
            self.line(
                "single-row txns: lag grows",
                if s.lag_grows { "yes" } else { "no" }.into(),
                format!(
                    "p99 first/last fifth {:.0}/{:.0} ms, slope {:.1} ms/s",
                    s.first_fifth_p99_ms, s.last_fifth_p99_ms, s.latency_slope_ms_per_s
                ),
                None,
                "no",
                Some(!s.lag_grows),
            );
            self.line(
                "single-row txns: p50 / p99 commit → in Kafka, in Kafka → applied",
                format!(
                    "{:.0} / {:.0} ms, {:.0} / {:.0} ms",
                    s.split.to_kafka_p50_ms,
                    s.split.to_kafka_p99_ms,
                    s.split.from_kafka_p50_ms,
                    s.split.from_kafka_p99_ms
                ),
                "Kafka timestamp: when the exporter produced".into(),
                None,
                "",
                None,
            );
            let st = &s.split.stalls;
            self.line(
                &format!(
                    "single-row txns: pauses ≥ {:.0} ms: nothing produced, nothing applied",
                    crate::phases::STALL_MS
                ),
                format!(
                    "{} (longest {:.0} ms), {} (longest {:.0} ms)",
                    st.produced, st.produced_longest_ms, st.applied, st.applied_longest_ms
                ),
                format!(
                    "{} of the {} apply pauses with newer records waiting in Kafka",
                    st.applied_with_records_waiting, st.applied
                ),
                None,
                "",
                None,
            );
            self.usage_lines("single", &s.usage, s.events as f64, "event", false);
            self.line(
                "single: count + checksum equal",
                format!("{} rows", s.checksum.rows),
                "source = target".into(),
                None,
                "equal",
                Some(true),
            );
            self.single = Some(s);
        }
        if let Some(s) = self.status.take() {
            self.line(
                &format!(
                    "cutover status: GET /api/status p50 / p99 ({} tables, {} requests)",
                    s.tables, s.requests
                ),
                format!("{:.1} / {:.1} ms", s.p50_ms, s.p99_ms),
                format!("a fresh measurement {:.0} ms", s.fresh_p50_ms),
                Some(s.p50_ms / s.fresh_p50_ms),
                "p99 ≤ 250 ms",
                Some(s.p99_ms <= 250.0),
            );
            self.line(
                "cutover status: the first request after a quiet minute",
                format!("{:.0} ms", s.first_ms),
                format!("a fresh measurement {:.0} ms", s.fresh_p50_ms),
                None,
                "≤ 1000 ms",
                Some(s.first_ms <= 1000.0),
            );
            self.status = Some(s);
        }
        if let Some(c) = self.cutover.take() {
            self.line(
                &format!(
                    "cutover: request to COMPLETED ({:.0} k events/s just before)",
                    c.source_events_per_second / 1e3
                ),
                format!("{:.0} ms", c.request_to_completed_ms),
                format!(
                    "{} events in {:.0} s; steps: {}",
                    c.events,
                    c.seconds,
                    c.steps
                        .iter()
                        .map(|(name, ms)| format!("{name} +{ms} ms"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
                "≤ 3000 ms",
                Some(c.request_to_completed_ms <= 3000.0),
            );
            self.line(
                "cutover: last source commit to applied on the target",
                format!("{:.0} ms", c.last_commit_to_applied_ms),
                String::new(),
                None,
                "≤ 3000 ms",
                Some(c.last_commit_to_applied_ms <= 3000.0),
            );
            self.line(
                "cutover: count + checksum equal",
                format!("{} rows", c.checksum.rows),
                "source = target".into(),
                None,
                "equal",
                Some(true),
            );
            self.cutover = Some(c);
        }
        if let Some(r) = self.replay.take() {
            self.replay_lines(&r);
            self.replay = Some(r);
        }
        for e in self.errors.clone() {
            self.line("FAILED", e, String::new(), None, "", Some(false));
        }
    }

    fn replay_lines(&mut self, r: &ReplayResult) {
        self.line(
            &format!("replay: to a JSON-lines file ({} events)", r.events),
            rate(r.file_events_per_second),
            format!("plain consumer {}", rate(r.plain_events_per_second)),
            Some(r.file_events_per_second / r.plain_events_per_second),
            "≥ 500 k/s",
            Some(r.file_events_per_second >= 500_000.0),
        );
        self.line(
            "replay: to a file, CPU per event",
            format!(
                "{:.2} µs",
                r.file_usage.cpu_seconds * 1e6 / r.events.max(1) as f64
            ),
            format!("{} written", mib(r.file_bytes)),
            None,
            "",
            None,
        );
        self.line(
            "replay: into a database",
            rate(r.database_events_per_second),
            format!("importer {}", rate(r.importer_events_per_second)),
            Some(r.database_events_per_second / r.importer_events_per_second),
            "≥ 0.90 × importer",
            Some(r.database_events_per_second >= 0.90 * r.importer_events_per_second),
        );
        self.line(
            "replay: count + checksum equal",
            format!("{} rows", r.checksum.rows),
            "source = database = file lines".into(),
            None,
            "equal",
            Some(true),
        );
    }

    /// True when every line with a target passed.
    pub fn all_pass(&self) -> bool {
        self.lines.iter().all(|l| l.pass != Some(false))
    }

    /// The plain table.
    pub fn table(&self) -> String {
        let header = [
            "figure",
            "Ferry",
            "same-run reference",
            "ratio",
            "target",
            "",
        ];
        let rows: Vec<[String; 6]> = self
            .lines
            .iter()
            .map(|l| {
                [
                    l.figure.clone(),
                    l.ferry.clone(),
                    l.reference.clone(),
                    l.ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
                    l.target.clone(),
                    match l.pass {
                        Some(true) => "PASS".into(),
                        Some(false) => "MISS".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let fmt = |cells: &[String]| -> String {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(widths) {
                s.push(' ');
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count()));
                s.push_str(" |");
            }
            s.push('\n');
            s
        };
        let mut out = fmt(&header.map(String::from));
        out.push('|');
        for w in widths {
            out.push_str(&"-".repeat(w + 2));
            out.push('|');
        }
        out.push('\n');
        for r in &rows {
            out.push_str(&fmt(r));
        }
        out
    }

    /// Per-phase CPU split by thread group (the profile evidence).
    pub fn cpu_split(&self) -> String {
        let mut out = String::new();
        let staged = self.snapshot.as_ref().and_then(|s| s.staged.as_ref());
        let snapshot_peer = self.snapshot.as_ref().and_then(|s| s.peer.as_ref());
        let phases: [(&str, Option<&Usage>); 8] = [
            (
                "snapshot staged, exporter alone",
                staged.map(|s| &s.export_usage),
            ),
            (
                if staged.is_some() {
                    "snapshot staged, importer alone"
                } else {
                    "snapshot"
                },
                self.snapshot.as_ref().map(|s| &s.usage),
            ),
            (
                "snapshot, Ferry's exporter alone (beside Debezium)",
                snapshot_peer
                    .filter(|_| staged.is_none())
                    .map(|p| &p.ferry_export_usage),
            ),
            (
                "snapshot, Debezium peer (the JVM is `java`, as the broker)",
                snapshot_peer.map(|p| &p.debezium.usage),
            ),
            ("cdc", self.cdc.as_ref().map(|s| &s.usage)),
            (
                "cdc, Ferry's exporter alone on the second backlog (beside Debezium)",
                self.cdc
                    .as_ref()
                    .and_then(|c| c.ferry_export_alone_usage.as_ref()),
            ),
            (
                "cdc, Debezium peer (the JVM is `java`, as the broker)",
                self.cdc
                    .as_ref()
                    .and_then(|c| c.peer.as_ref())
                    .map(|d| &d.usage),
            ),
            ("single", self.single.as_ref().map(|s| &s.usage)),
        ];
        for (name, usage) in phases {
            let Some(u) = usage else { continue };
            out.push_str(&format!(
                "{name}: {:.1} CPU s in this process; by thread:\n",
                u.cpu_seconds
            ));
            for (group, secs) in &u.split {
                out.push_str(&format!(
                    "  {secs:>8.1} s  {:>5.1} %  {group}\n",
                    100.0 * secs / u.cpu_seconds.max(1e-9)
                ));
            }
            let wall = u.wall_seconds.max(1e-9);
            out.push_str(&format!(
                "  in {:.1} s wall: this process {:.2} cores; other processes:",
                u.wall_seconds,
                u.cpu_seconds / wall
            ));
            for (name, secs) in u.machine.iter().take(5) {
                out.push_str(&format!(" {name} {secs:.1} s ({:.2} cores)", secs / wall));
            }
            if let Some(waiting) = u.cpu_waiting {
                out.push_str(&format!(
                    "; some task waited for a core {:.0} % of the time (/proc/pressure/cpu)",
                    100.0 * waiting
                ));
            }
            out.push('\n');
        }
        out
    }
}
