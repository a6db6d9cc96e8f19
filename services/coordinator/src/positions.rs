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

use ferry_shared::envelope::OpCounts;
use ferry_shared::heartbeat::ExporterHeartbeat;
use ferry_shared::kafka;
use ferry_shared::state::{now_ms, MigrationStatus};
use ferry_shared::topics::{Destination, Stream};
use serde::{Deserialize, Serialize};

use crate::databases;
use crate::migration::Migration;

mod instances;
mod metrics;

pub use instances::*;
pub use metrics::metrics;

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
    /// Why the figures are missing, when they are (see `last_error` for the importers'
    /// own errors).
    pub error: Option<String>,
    /// The newest current error of an instance of this group (it stopped on it, or
    /// retries), until an instance of the group runs successfully after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<InstanceError>,
}

/// One table: what each stream exported of it and what each destination applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TableStatus {
    /// `schema.table`.
    pub table: String,
    /// Per stream that has the table.
    pub streams: Vec<TableStream>,
    /// Per destination that applied some of it or applies a stream that has it.
    pub destinations: Vec<TableDestination>,
}

/// One table in one stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableStream {
    /// `source` or `target`.
    pub stream: Stream,
    /// Snapshot chunks of the table in Kafka, and planned (0 and 0: none planned or no
    /// snapshot, as on the target stream).
    pub snapshot_chunks_done: usize,
    /// See `snapshot_chunks_done`.
    pub snapshot_chunks: usize,
    /// Whether the table's snapshot is complete.
    pub snapshot_done: bool,
    /// Events exported, by kind, up to the exporter's last checkpoint.
    pub exported: OpCounts,
    /// Records in the table's topic (sum of its partitions' high watermarks).
    pub records: i64,
}

/// One table in one destination.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableDestination {
    /// target, source-replica or source.
    pub destination: Destination,
    /// Events applied, by kind (from `ferry_metadata.table_counts`).
    pub applied: OpCounts,
    /// Records of the table's topic in the stream the destination applies, not applied
    /// yet.
    pub remaining: i64,
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
    /// Per table, exported and applied (empty when measured by an older coordinator).
    #[serde(default)]
    pub tables: Vec<TableStatus>,
    /// Every current error of an exporter or importer instance, newest first.
    #[serde(default)]
    pub errors: Vec<InstanceError>,
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
    let errors = beats.current_errors(now);
    let mut stream_highs = HashMap::new();
    let mut streams = Vec::new();
    for stream in [Stream::Source, Stream::Target] {
        let h = highs(m, stream).await.unwrap_or_default();
        let beat = beats.exporters.get(&stream);
        let fin = view.finals.get(&stream);
        let current = errors
            .iter()
            .find(|e| e.role == "exporter" && e.unit == stream.as_str());
        // A stop recorded after the exporter's last heartbeat wins over it.
        let stopped_since = |b: &&ExporterHeartbeat| {
            current.is_some_and(|e| e.state == "failed" && e.error.at_ms >= b.at_ms)
        };
        let live = beat.filter(|b| {
            now - b.at_ms < STALE_MS
                && b.phase != "failed"
                && b.phase != "stopped"
                && !stopped_since(b)
        });
        let exporter_phase = match (fin, live, current) {
            (Some(_), _, _) => "stopped".to_owned(),
            (None, Some(b), _) => b.phase.clone(),
            (None, None, Some(e)) if e.state == "failed" => "failed".to_owned(),
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
            exporter_error: current
                .map(|e| e.error.clone())
                .or_else(|| live.and_then(|b| b.error.clone())),
        });
        stream_highs.insert(stream, h);
    }
    let mut importers = Vec::new();
    let mut applied: HashMap<Destination, BTreeMap<String, OpCounts>> = HashMap::new();
    let mut group_positions: HashMap<Destination, GroupPositions> = HashMap::new();
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
        let no_beats = BTreeMap::new();
        let group_beats = group_beats.unwrap_or(&no_beats);
        let group_errors: Vec<InstanceError> = errors
            .iter()
            .filter(|e| e.role == "importer" && e.unit == destination.as_str())
            .cloned()
            .collect();
        let instance_states = instance_states(group_beats, &group_errors, now);
        let live = up_beats(group_beats, &instance_states);
        // A fold from +0.0: an empty f64 sum is -0.0, shown as "-0 events/s".
        let rate_3m: f64 = live.iter().fold(0.0, |a, h| a + h.rate_3m);
        let rate_10m: f64 = live.iter().fold(0.0, |a, h| a + h.rate_10m);
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
            last_error: group_errors.first().cloned(),
        };
        match databases::connect(&m.config, destination).await {
            Ok(db) => match databases::positions(&db, &group).await {
                Ok(pos) => {
                    if let Ok(counts) = databases::table_counts(&db, &group).await {
                        applied.insert(destination, counts);
                    }
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
                    group_positions.insert(destination, pos.clone());
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
    let tables = tables(TableInputs {
        m,
        view: &view,
        msr: &msr,
        stream_highs: &stream_highs,
        applied: &applied,
        positions: &group_positions,
    });
    Status {
        migration: msr,
        streams,
        importers,
        tables,
        errors,
        at_ms: now,
    }
}

/// A group's stored positions: (topic, partition) -> (next offset, last applied VSN).
type GroupPositions = HashMap<(String, i32), (i64, i64)>;

/// What [`tables`] reads.
struct TableInputs<'a> {
    m: &'a Migration,
    view: &'a ferry_shared::state::StateView,
    msr: &'a MigrationStatus,
    stream_highs: &'a HashMap<Stream, HashMap<(String, i32), i64>>,
    applied: &'a HashMap<Destination, BTreeMap<String, OpCounts>>,
    positions: &'a HashMap<Destination, GroupPositions>,
}

/// Per table: every table a checkpoint or a destination's counts name.
fn tables(i: TableInputs<'_>) -> Vec<TableStatus> {
    let mut names: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for cp in i.view.checkpoints.values() {
        names.extend(cp.counts.keys().cloned());
        names.extend(cp.snapshot.tables.keys().cloned());
    }
    for counts in i.applied.values() {
        names.extend(counts.keys().cloned());
    }
    // The sum of a table topic's partitions' high watermarks, and of the records not
    // applied yet by a group at `positions`.
    let topic_of = |stream: Stream, name: &str| {
        let (schema, table) = name.split_once('.').unwrap_or(("", name));
        i.m.topics.table(stream, schema, table)
    };
    let mut out = Vec::new();
    for name in names {
        let mut t = TableStatus {
            table: name.clone(),
            ..TableStatus::default()
        };
        for stream in [Stream::Source, Stream::Target] {
            let topic = topic_of(stream, &name);
            let highs: Vec<(i32, i64)> = i
                .stream_highs
                .get(&stream)
                .map(|h| {
                    h.iter()
                        .filter(|((t, _), _)| *t == topic)
                        .map(|((_, p), high)| (*p, *high))
                        .collect()
                })
                .unwrap_or_default();
            let cp = i.view.checkpoints.get(&stream);
            let progress = cp.and_then(|c| c.snapshot.tables.get(&name));
            let exported = cp.and_then(|c| c.counts.get(&name)).cloned();
            if highs.is_empty() && progress.is_none() && exported.is_none() {
                continue;
            }
            t.streams.push(TableStream {
                stream,
                snapshot_chunks_done: progress.map_or(0, |p| p.done.iter().filter(|d| **d).count()),
                snapshot_chunks: progress.map_or(0, |p| p.chunks.len()),
                snapshot_done: progress.is_some_and(|p| p.is_done())
                    || (stream == Stream::Source && cp.is_some_and(|c| c.snapshot.done)),
                exported: exported.unwrap_or_default(),
                records: highs.iter().map(|(_, h)| h).sum(),
            });
        }
        for destination in [
            Destination::Target,
            Destination::SourceReplica,
            Destination::Source,
        ] {
            let applied = i.applied.get(&destination).and_then(|c| c.get(&name));
            let stream = i.msr.importers.get(destination);
            let remaining = match (stream, i.positions.get(&destination)) {
                (Some(stream), Some(pos)) => {
                    let topic = topic_of(stream, &name);
                    i.stream_highs
                        .get(&stream)
                        .map(|h| {
                            h.iter()
                                .filter(|((t, _), _)| *t == topic)
                                .map(|(key, high)| {
                                    (high - pos.get(key).map_or(0, |(o, _)| *o)).max(0)
                                })
                                .sum()
                        })
                        .unwrap_or(0)
                }
                _ => 0,
            };
            if applied.is_none() && (stream.is_none() || !i.positions.contains_key(&destination)) {
                continue;
            }
            t.destinations.push(TableDestination {
                destination,
                applied: applied.cloned().unwrap_or_default(),
                remaining,
            });
        }
        out.push(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_shared::heartbeat::{
        error_key, importer_heartbeat_key, ErrorRecord, ImporterHeartbeat, ServiceError,
    };

    fn beat(instance: &str, phase: &str, ts_ms: i64, ok_at_ms: i64) -> ImporterHeartbeat {
        ImporterHeartbeat {
            role: "importer".into(),
            destination: "target".into(),
            group: "g".into(),
            phase: phase.into(),
            stream: Some("source".into()),
            instance: instance.into(),
            total_imported: 0,
            imported_this_run: 0,
            rate_3m: 0.0,
            rate_10m: 0.0,
            remaining: 0,
            partitions_held: 1,
            positions: Vec::new(),
            ts_ms,
            started_at_ms: ts_ms,
            error: None,
            ok_at_ms,
        }
    }

    fn error(instance: &str, kind: &str, at_ms: i64) -> ErrorRecord {
        ErrorRecord {
            role: "importer".into(),
            unit: "target".into(),
            instance: instance.into(),
            error: ServiceError {
                kind: kind.into(),
                message: "table \"public.t\" on the target has no column \"c\"".into(),
                at_ms,
            },
        }
    }

    fn records(beats: &[ImporterHeartbeat], errors: &[ErrorRecord]) -> Heartbeats {
        let mut map = HashMap::new();
        for b in beats {
            map.insert(
                importer_heartbeat_key(&b.destination, &b.instance).into_bytes(),
                serde_json::to_vec(b).unwrap_or_default(),
            );
        }
        for e in errors {
            map.insert(
                error_key(&e.role, &e.unit, &e.instance).into_bytes(),
                serde_json::to_vec(e).unwrap_or_default(),
            );
        }
        Heartbeats::from_records(&map)
    }

    const NOW: i64 = 10_000_000_000;

    #[test]
    fn a_restarted_instance_does_not_hide_the_error_until_it_runs_successfully() {
        // The same key (a container restarted: same host, pid 1): its first heartbeat
        // replaced the failed one, but the error record stays.
        let failed_at = NOW - 5_000;
        let h = records(
            &[beat("c:1", "applying", NOW - 1_000, 0)],
            &[error("c:1", "definite", failed_at)],
        );
        let errors = h.current_errors(NOW);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].state, "failed");
        let states = instance_states(&h.importers["target"], &errors, NOW);
        assert_eq!(states[0].state, "running");
        assert_eq!(states[0].error.as_ref().map(|e| e.at_ms), Some(failed_at));
        // It committed a batch after the error: gone.
        let h = records(
            &[beat("c:1", "applying", NOW, NOW - 500)],
            &[error("c:1", "definite", failed_at)],
        );
        assert!(h.current_errors(NOW).is_empty());
    }

    #[test]
    fn a_stop_recorded_after_the_last_heartbeat_is_a_failed_instance() {
        // The process died before its failed heartbeat reached the topic: its last
        // heartbeat says applying, but the error record came after it.
        let h = records(
            &[beat("d:2", "applying", NOW - 2_000, 0)],
            &[error("d:2", "definite", NOW - 1_000)],
        );
        let errors = h.current_errors(NOW);
        let states = instance_states(&h.importers["target"], &errors, NOW);
        assert_eq!(states[0].state, "failed", "{states:?}");
        // Nor is it counted as an instance that runs, nor in the rates.
        assert!(up_beats(&h.importers["target"], &states).is_empty());
        // Its failed heartbeat overwritten by a late one of its own sent before it: it
        // stays stopped after another instance ran successfully (its error no longer
        // current) too.
        let mut ok = beat("e:3", "standby", NOW - 100, NOW - 200);
        ok.started_at_ms = NOW - 500;
        let h = records(
            &[beat("d:2", "applying", NOW - 2_000, 0), ok],
            &[error("d:2", "definite", NOW - 1_000)],
        );
        assert!(h.current_errors(NOW).is_empty());
        let states = instance_states(&h.importers["target"], &[], NOW);
        assert!(states.iter().all(|s| s.instance != "d:2"), "{states:?}");
        let h = records(
            &[
                beat("d:2", "applying", NOW - 2_000, 0),
                beat("e:3", "standby", NOW - 100, 0),
            ],
            &[error("d:2", "definite", NOW - 1_000)],
        );
        let errors = h.current_errors(NOW);
        let states = instance_states(&h.importers["target"], &errors, NOW);
        let up = up_beats(&h.importers["target"], &states);
        assert_eq!(
            up.iter().map(|b| b.instance.as_str()).collect::<Vec<_>>(),
            ["e:3"],
            "{states:?}"
        );
    }

    #[test]
    fn a_failure_stays_listed_however_old_and_whoever_started_since() {
        let failed_at = NOW - 5 * 3_600_000;
        let mut gone = beat("a:7", "failed", failed_at, 0);
        gone.error = Some(error("a:7", "definite", failed_at).error);
        // Another instance started later but has not run successfully yet.
        let h = records(
            &[gone, beat("b:9", "applying", NOW - 1_000, 0)],
            &[error("a:7", "definite", failed_at)],
        );
        let errors = h.current_errors(NOW);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let states = instance_states(&h.importers["target"], &errors, NOW);
        let a = states.iter().find(|s| s.instance == "a:7");
        assert_eq!(a.map(|s| s.state.as_str()), Some("failed"), "{states:?}");
    }

    #[test]
    fn an_error_record_without_a_heartbeat_is_an_instance_too() {
        let h = records(&[], &[error("x:3", "fatal", NOW - 10)]);
        let errors = h.current_errors(NOW);
        let states = instance_states(&BTreeMap::new(), &errors, NOW);
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].state, "failed");
        assert_eq!(
            states[0].error.as_ref().map(|e| e.kind.as_str()),
            Some("fatal")
        );
    }

    #[test]
    fn a_transient_error_shows_while_the_instance_retries_and_metrics_carry_it() {
        let mut retrying = beat("r:2", "retrying", NOW - 2_000, 0);
        retrying.error = Some(ServiceError {
            kind: "transient".into(),
            message: "connection refused".into(),
            at_ms: NOW - 3_000,
        });
        let h = records(&[retrying.clone()], &[]);
        let errors = h.current_errors(NOW);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].state, "retrying");
        let states = instance_states(&h.importers["target"], &errors, NOW);
        assert_eq!(states[0].state, "retrying");
        // Silent for over a minute: no longer retrying (it is "not seen").
        let later = NOW + STALE_MS;
        assert!(h.current_errors(later).is_empty());

        let status = Status {
            migration: MigrationStatus::default(),
            streams: Vec::new(),
            importers: Vec::new(),
            tables: Vec::new(),
            errors,
            at_ms: NOW,
        };
        let text = metrics(&status);
        let line = format!(
            "ferry_instance_error{{role=\"importer\",unit=\"target\",instance=\"r:2\",kind=\"transient\"}} {}",
            (NOW - 3_000) as f64 / 1000.0
        );
        assert!(text.contains(&line), "{text}");
        // One HELP and TYPE per metric name (a repeated family fails the whole scrape).
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "{text}");
    }
}
