//! Where every stream and importer stands, as VSNs and offsets (DESIGN.md §6): per
//! stream the exporter's last VSN and the topics' high watermarks; per importer group
//! the applied offset and VSN of every partition (read from `ferry_metadata` in its
//! database, the truth), records remaining, rates from the heartbeats, ETA.
//!
//! Measuring reads every topic's ends and every destination's positions: too slow to do
//! per request with many tables. [`refresh`] measures in the background, one pass after
//! the other (at most every [`REFRESH_EVERY`]), and [`status`] answers at once with the
//! last measurement and the current migration status record; `at_ms` says when the
//! figures were measured.

use std::collections::{BTreeMap, HashMap};

use ferry_shared::heartbeat::{ExporterHeartbeat, ImporterHeartbeat, ServiceError};
use ferry_shared::kafka;
use ferry_shared::state::{now_ms, MigrationStatus};
use ferry_shared::topics::{Destination, Stream};
use serde::{Deserialize, Serialize};

use crate::databases;
use crate::migration::Migration;

/// A heartbeat older than this means the service is not running.
pub const STALE_MS: i64 = 60_000;

/// The latest heartbeat of every service instance.
#[derive(Clone, Debug, Default)]
pub struct Heartbeats {
    /// By stream.
    pub exporters: HashMap<Stream, ExporterHeartbeat>,
    /// By destination, then instance.
    pub importers: HashMap<String, BTreeMap<String, ImporterHeartbeat>>,
}

impl Heartbeats {
    /// From the latest value of every `_status` key.
    pub fn from_records(records: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let mut out = Heartbeats::default();
        for value in records.values() {
            if let Ok(e) = serde_json::from_slice::<ExporterHeartbeat>(value) {
                if e.role == "exporter" {
                    out.exporters.insert(e.stream, e);
                    continue;
                }
            }
            if let Ok(i) = serde_json::from_slice::<ImporterHeartbeat>(value) {
                if i.role == "importer" {
                    out.importers
                        .entry(i.destination.clone())
                        .or_default()
                        .insert(i.instance.clone(), i);
                }
            }
        }
        out
    }
}

/// One stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamStatus {
    /// `source` or `target`.
    pub stream: Stream,
    /// What the MSR tells its exporter (`standby`, `run`, `stop`).
    pub directive: String,
    /// The exporter's own phase from its last heartbeat (`not running` when none is
    /// recent; `stopped` once its final record exists).
    pub exporter_phase: String,
    /// Last VSN stamped.
    pub last_vsn: u64,
    /// Source position of its last checkpoint.
    pub lsn: String,
    /// Whether a stored checkpoint says the snapshot is done (what a cutover to target
    /// needs from the source stream).
    #[serde(default)]
    pub snapshot_done: bool,
    /// Events per second over 3 and 10 minutes.
    pub rate_3m: f64,
    /// See `rate_3m`.
    pub rate_10m: f64,
    /// Table topics of the stream.
    pub topics: usize,
    /// Sum of the high watermarks of their partitions (records in the stream).
    pub records: i64,
    /// The exporter's last error (with `exporter_phase` `failed` when it stopped on it),
    /// until it runs again without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporter_error: Option<ServiceError>,
}

/// One importer process, as its heartbeats tell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceState {
    /// `host:pid`.
    pub instance: String,
    /// `running`, `standby`, `stopped` (exited cleanly), `failed` (exited on `error`)
    /// or `not seen` (no heartbeat for a minute: killed, or its machine is gone).
    pub state: String,
    /// Its last heartbeat, milliseconds since the epoch.
    pub last_seen_ms: i64,
    /// Partitions it held then.
    pub partitions_held: u32,
    /// Its last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ServiceError>,
}

/// How long an instance that stopped, failed or went silent stays listed when no
/// instance of its group started after it.
pub const GONE_SHOWN_MS: i64 = 3_600_000;

/// The instances of one importer group worth showing: every live one, and those that
/// stopped, failed or went silent unless an instance started after them.
pub fn instance_states(
    beats: &BTreeMap<String, ImporterHeartbeat>,
    now: i64,
) -> Vec<InstanceState> {
    let live = |h: &ImporterHeartbeat| {
        now - h.ts_ms < STALE_MS && h.phase != "failed" && h.phase != "stopped"
    };
    let newest_start = beats
        .values()
        .filter(|h| live(h))
        .map(|h| h.started_at_ms)
        .max()
        .unwrap_or(0);
    let mut out: Vec<InstanceState> = beats
        .values()
        .filter_map(|h| {
            let state = if live(h) {
                if h.phase == "standby" {
                    "standby"
                } else {
                    "running"
                }
            } else if h.ts_ms < newest_start || now - h.ts_ms > GONE_SHOWN_MS {
                return None;
            } else if h.phase == "failed" {
                "failed"
            } else if h.phase == "stopped" {
                "stopped"
            } else {
                "not seen"
            };
            Some(InstanceState {
                instance: h.instance.clone(),
                state: state.to_owned(),
                last_seen_ms: h.ts_ms,
                partitions_held: h.partitions_held,
                error: h.error.clone(),
            })
        })
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.last_seen_ms));
    out
}

/// One importer group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImporterStatus {
    /// Destination.
    pub destination: Destination,
    /// Consumer group.
    pub group: String,
    /// The stream the MSR tells it to apply (`None`: waiting or paused).
    pub stream: Option<Stream>,
    /// Instances with a recent heartbeat that are running.
    pub instances: usize,
    /// Each instance: running, stopped, failed (with its error) or not seen.
    #[serde(default)]
    pub instance_states: Vec<InstanceState>,
    /// Records of its stream not yet applied (high watermarks − stored positions).
    pub remaining: i64,
    /// Highest applied VSN over its partitions.
    pub applied_vsn: u64,
    /// Events per second over 3 and 10 minutes (sum over instances).
    pub rate_3m: f64,
    /// See `rate_3m`.
    pub rate_10m: f64,
    /// Seconds to catch up at `rate_3m` (`None`: unknown; 0: caught up).
    pub eta_seconds: Option<f64>,
    /// Why the figures are missing, when they are.
    pub error: Option<String>,
}

/// Everything `ferry cutover status` and the dashboard show.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The migration status record.
    pub migration: MigrationStatus,
    /// Streams.
    pub streams: Vec<StreamStatus>,
    /// Importer groups (of the configured databases).
    pub importers: Vec<ImporterStatus>,
    /// When computed.
    pub at_ms: i64,
}

/// High watermark per (topic, partition) of a stream's table topics (one client for all).
async fn highs(m: &Migration, stream: Stream) -> Result<HashMap<(String, i32), i64>, kafka::Error> {
    let prefix = format!("{}.{}.", m.topics.prefix(), stream);
    let names = kafka::list_topics(m.kafka(), &prefix).await?;
    let marks = kafka::watermarks_of(m.kafka(), &names).await?;
    let mut out = HashMap::new();
    for (topic, marks) in marks {
        for (p, (_, high)) in marks.into_iter().enumerate() {
            out.insert((topic.clone(), p as i32), high);
        }
    }
    Ok(out)
}

/// How often [`refresh`] measures at most.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// [`refresh`] measures while status was asked for within this long (someone runs
/// `ferry cutover status`, has the page open, or Prometheus scrapes `/metrics`).
pub const WATCHED_FOR_MS: i64 = 60_000;

/// A measurement older than this is not served: [`status`] measures during the request.
pub const STALE_AFTER_MS: i64 = 15_000;

/// Measures the status again and again until `shutdown` while someone asks for it,
/// keeping the last measurement for [`status`].
pub async fn refresh(m: std::sync::Arc<Migration>, mut shutdown: ferry_shared::shutdown::Shutdown) {
    use std::sync::atomic::Ordering;
    loop {
        let started = std::time::Instant::now();
        let watched = now_ms() - m.last_asked_ms.load(Ordering::Relaxed) < WATCHED_FOR_MS;
        if watched {
            let s = measure(&m).await;
            if let Ok(mut last) = m.measured.write() {
                *last = Some(s);
            }
        }
        let pause = REFRESH_EVERY.saturating_sub(started.elapsed());
        tokio::select! {
            biased;
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The status: the last measurement with the current MSR (measured now when there is
/// none, or it is older than [`STALE_AFTER_MS`]). The directives and the streams the
/// importers apply come from the current MSR too.
pub async fn status(m: &Migration) -> Status {
    let now = now_ms();
    m.last_asked_ms
        .store(now, std::sync::atomic::Ordering::Relaxed);
    let last = m
        .measured
        .read()
        .ok()
        .and_then(|s| s.clone())
        .filter(|s| now - s.at_ms < STALE_AFTER_MS);
    let mut s = match last {
        Some(s) => s,
        None => {
            let s = measure(m).await;
            if let Ok(mut last) = m.measured.write() {
                *last = Some(s.clone());
            }
            s
        }
    };
    let msr = m.msr().await;
    for st in &mut s.streams {
        st.directive = format!("{:?}", msr.stream(st.stream).phase).to_lowercase();
    }
    for i in &mut s.importers {
        i.stream = msr.importers.get(i.destination);
    }
    s.migration = msr;
    s
}

/// Measures the status now.
pub async fn measure(m: &Migration) -> Status {
    let msr = m.msr().await;
    let view = m.view();
    let beats = m.heartbeats.borrow().clone().unwrap_or_default();
    let now = now_ms();
    let mut stream_highs = HashMap::new();
    let mut streams = Vec::new();
    for stream in [Stream::Source, Stream::Target] {
        let h = highs(m, stream).await.unwrap_or_default();
        let beat = beats.exporters.get(&stream);
        let fin = view.finals.get(&stream);
        let exporter_phase = match (fin, beat) {
            (Some(_), _) => "stopped".to_owned(),
            (None, Some(b)) if b.phase == "failed" => "failed".to_owned(),
            (None, Some(b)) if now - b.at_ms < STALE_MS => b.phase.clone(),
            _ => "not running".to_owned(),
        };
        let cp = view.checkpoints.get(&stream);
        streams.push(StreamStatus {
            stream,
            directive: format!("{:?}", msr.stream(stream).phase).to_lowercase(),
            exporter_phase,
            last_vsn: fin
                .map(|f| f.last_vsn.0)
                .or(beat.map(|b| b.last_vsn.0))
                .or(cp.map(|c| c.next_vsn.0.saturating_sub(1)))
                .unwrap_or(0),
            lsn: cp.map(|c| c.lsn.to_string()).unwrap_or_default(),
            snapshot_done: cp.is_some_and(|c| c.snapshot.done),
            rate_3m: beat
                .filter(|b| now - b.at_ms < STALE_MS)
                .map_or(0.0, |b| b.rate_3m),
            rate_10m: beat
                .filter(|b| now - b.at_ms < STALE_MS)
                .map_or(0.0, |b| b.rate_10m),
            topics: h
                .keys()
                .map(|(t, _)| t)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            records: h.values().sum(),
            exporter_error: beat.and_then(|b| b.error.clone()),
        });
        stream_highs.insert(stream, h);
    }
    let mut importers = Vec::new();
    for destination in [
        Destination::Target,
        Destination::SourceReplica,
        Destination::Source,
    ] {
        if m.config.database(destination).is_none() {
            continue;
        }
        let group = m.topics.import_group(destination);
        let stream = msr.importers.get(destination);
        let group_beats = beats.importers.get(destination.as_str());
        let live: Vec<&ImporterHeartbeat> = group_beats
            .map(|b| {
                b.values()
                    .filter(|h| {
                        now - h.ts_ms < STALE_MS && h.phase != "failed" && h.phase != "stopped"
                    })
                    .collect()
            })
            .unwrap_or_default();
        let instance_states = group_beats
            .map(|b| instance_states(b, now))
            .unwrap_or_default();
        let rate_3m: f64 = live.iter().map(|h| h.rate_3m).sum();
        let rate_10m: f64 = live.iter().map(|h| h.rate_10m).sum();
        let mut st = ImporterStatus {
            destination,
            group: group.clone(),
            stream,
            instances: live.len(),
            instance_states,
            remaining: 0,
            applied_vsn: 0,
            rate_3m,
            rate_10m,
            eta_seconds: None,
            error: None,
        };
        match databases::connect(&m.config, destination).await {
            Ok(db) => match databases::positions(&db, &group).await {
                Ok(pos) => {
                    st.applied_vsn = pos.values().map(|(_, v)| *v as u64).max().unwrap_or(0);
                    let streams_read: Vec<Stream> = match stream {
                        Some(s) => vec![s],
                        None => Vec::new(),
                    };
                    for s in streams_read {
                        if let Some(h) = stream_highs.get(&s) {
                            for (key, high) in h {
                                let at = pos.get(key).map_or(0, |(o, _)| *o);
                                st.remaining += (high - at).max(0);
                            }
                        }
                    }
                    st.eta_seconds = if st.remaining == 0 {
                        Some(0.0)
                    } else if rate_3m > 0.0 {
                        Some(st.remaining as f64 / rate_3m)
                    } else {
                        None
                    };
                }
                Err(e) => st.error = Some(e.describe()),
            },
            Err(e) => st.error = Some(e.describe()),
        }
        importers.push(st);
    }
    Status {
        migration: msr,
        streams,
        importers,
        at_ms: now,
    }
}

/// Prometheus text exposition of `status`.
pub fn metrics(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let mut section = |name: &str, help: &str, kind: &str, rows: Vec<String>| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in rows {
            let _ = writeln!(text, "{name}{r}");
        }
    };
    section(
        "ferry_stream_last_vsn",
        "Last VSN stamped by the stream's exporter.",
        "gauge",
        s.streams
            .iter()
            .map(|st| format!("{{stream=\"{}\"}} {}", st.stream, st.last_vsn))
            .collect(),
    );
    section(
        "ferry_stream_records",
        "Records in the stream's table topics (sum of high watermarks).",
        "gauge",
        s.streams
            .iter()
            .map(|st| format!("{{stream=\"{}\"}} {}", st.stream, st.records))
            .collect(),
    );
    section(
        "ferry_exporter_rate_events_per_second",
        "Exporter rate over the last 3 minutes.",
        "gauge",
        s.streams
            .iter()
            .map(|st| format!("{{stream=\"{}\"}} {}", st.stream, st.rate_3m))
            .collect(),
    );
    section(
        "ferry_importer_remaining_events",
        "Records of the importer's stream not yet applied.",
        "gauge",
        s.importers
            .iter()
            .map(|i| format!("{{destination=\"{}\"}} {}", i.destination, i.remaining))
            .collect(),
    );
    section(
        "ferry_importer_instances",
        "Importer processes by state (running, standby, stopped, failed, not seen).",
        "gauge",
        s.importers
            .iter()
            .flat_map(|i| {
                ["running", "standby", "stopped", "failed", "not seen"]
                    .into_iter()
                    .map(move |state| {
                        let n = i
                            .instance_states
                            .iter()
                            .filter(|x| x.state == state)
                            .count();
                        format!(
                            "{{destination=\"{}\",state=\"{}\"}} {n}",
                            i.destination,
                            state.replace(' ', "_")
                        )
                    })
            })
            .collect(),
    );
    section(
        "ferry_exporter_failed",
        "1 when the stream's exporter stopped on a definite error (see cutover status).",
        "gauge",
        s.streams
            .iter()
            .map(|st| {
                format!(
                    "{{stream=\"{}\"}} {}",
                    st.stream,
                    u8::from(st.exporter_phase == "failed")
                )
            })
            .collect(),
    );
    section(
        "ferry_importer_applied_vsn",
        "Highest VSN applied by the importer group.",
        "gauge",
        s.importers
            .iter()
            .map(|i| format!("{{destination=\"{}\"}} {}", i.destination, i.applied_vsn))
            .collect(),
    );
    section(
        "ferry_importer_rate_events_per_second",
        "Importer rate over the last 3 minutes (all instances).",
        "gauge",
        s.importers
            .iter()
            .map(|i| format!("{{destination=\"{}\"}} {}", i.destination, i.rate_3m))
            .collect(),
    );
    section(
        "ferry_importer_instances",
        "Importer processes with a recent heartbeat.",
        "gauge",
        s.importers
            .iter()
            .map(|i| format!("{{destination=\"{}\"}} {}", i.destination, i.instances))
            .collect(),
    );
    section(
        "ferry_cutover_status",
        "Cutover status: 0 not initiated, 1 initiated, 2 completed.",
        "gauge",
        [
            Destination::Target,
            Destination::SourceReplica,
            Destination::Source,
        ]
        .into_iter()
        .map(|d| {
            let v = match s.migration.cutover(d).status {
                ferry_shared::state::CutoverStatus::NotInitiated => 0,
                ferry_shared::state::CutoverStatus::Initiated => 1,
                ferry_shared::state::CutoverStatus::Completed => 2,
            };
            format!("{{to=\"{d}\"}} {v}")
        })
        .collect(),
    );
    text
}
