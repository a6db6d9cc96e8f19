//! The migration status record (MSR) and the other records of `<prefix>._state` that
//! services act on (DESIGN.md §6).
//!
//! Writers, one per key:
//!
//! | key | writer | record |
//! | --- | --- | --- |
//! | `migration` | the coordinator, only | [`MigrationStatus`] |
//! | `exporter.<stream>` | that stream's exporter | [`crate::checkpoint::ExporterCheckpoint`] |
//! | `exporter.<stream>.final` | that stream's exporter, once, when it stopped for a cutover | [`ExporterFinal`] |
//!
//! Services never wait for the coordinator to start: while no MSR exists, the default
//! one ([`MigrationStatus::default`]) says what they do before any cutover (the source
//! stream runs, the target and source-replica importers apply it, the target exporter
//! and the source importer wait). Every service tails `_state` with [`watch`] and
//! follows the MSR as it changes.

use std::collections::{BTreeMap, HashMap};

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::watch as tokio_watch;

use crate::checkpoint::ExporterCheckpoint;
use crate::position::{Lsn, Vsn};
use crate::shutdown::Shutdown;
use crate::topics::{Destination, Stream};

mod tail;

pub use tail::tail_compacted;

/// The `_state` key of the migration status record.
pub const MSR_KEY: &str = "migration";

/// The `_state` key of a stream's final record.
pub fn final_key(stream: Stream) -> String {
    format!("exporter.{stream}.final")
}

pub use crate::clock::{format_ms, now_ms};

/// What the exporter of a stream must do.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamPhase {
    /// Wait: the stream is not enabled yet.
    #[default]
    Standby,
    /// Export.
    Run,
    /// Export every change up to the end of the database's WAL at the time of the
    /// request, write the final record and stop.
    Stop,
}

/// A stream's directive in the MSR.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDirective {
    /// What to do.
    pub phase: StreamPhase,
    /// The lowest VSN the stream may use (the target stream continues above the source
    /// stream's last VSN).
    #[serde(default)]
    pub first_vsn: Vsn,
}

/// The workflow, fixed when cutover to target is requested.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workflow {
    /// Source to target, nothing kept in sync afterwards.
    #[default]
    Live,
    /// Afterwards the target stream is applied to the source-replica.
    FallForward,
    /// Afterwards the target stream is applied to the source.
    FallBack,
}

impl From<crate::config::Workflow> for Workflow {
    fn from(w: crate::config::Workflow) -> Self {
        match w {
            crate::config::Workflow::Live => Workflow::Live,
            crate::config::Workflow::FallForward => Workflow::FallForward,
            crate::config::Workflow::FallBack => Workflow::FallBack,
        }
    }
}

impl Workflow {
    /// The name shown to the operator.
    pub fn as_str(self) -> &'static str {
        match self {
            Workflow::Live => "live",
            Workflow::FallForward => "fall-forward",
            Workflow::FallBack => "fall-back",
        }
    }
}

/// Where a cutover stands (the seeds' names).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CutoverStatus {
    /// Not requested.
    #[default]
    NotInitiated,
    /// Requested, steps in progress.
    Initiated,
    /// Every step done.
    Completed,
}

impl CutoverStatus {
    /// The name shown to the operator.
    pub fn as_str(self) -> &'static str {
        match self {
            CutoverStatus::NotInitiated => "NOT_INITIATED",
            CutoverStatus::Initiated => "INITIATED",
            CutoverStatus::Completed => "COMPLETED",
        }
    }
}

/// One finished step of a cutover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoverStep {
    /// Stable name (e.g. `exporter-stopped`).
    pub name: String,
    /// What it means, for people.
    pub description: String,
    /// When it was found done, ms since the epoch.
    pub done_at_ms: i64,
}

/// One cutover (to target, to source-replica or to source).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutover {
    /// Where it stands.
    pub status: CutoverStatus,
    /// When it was requested.
    #[serde(default)]
    pub requested_at_ms: Option<i64>,
    /// When it completed.
    #[serde(default)]
    pub completed_at_ms: Option<i64>,
    /// Steps done so far, in order.
    #[serde(default)]
    pub steps: Vec<CutoverStep>,
    /// What the next step waits for (or the error that keeps it from progressing).
    #[serde(default)]
    pub waiting_for: Option<String>,
}

impl Cutover {
    /// True when step `name` is done.
    pub fn done(&self, name: &str) -> bool {
        self.steps.iter().any(|s| s.name == name)
    }
}

/// Which stream each importer applies (`None`: it waits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImporterDirectives {
    /// The target's importer.
    pub target: Option<Stream>,
    /// The source-replica's importer.
    pub source_replica: Option<Stream>,
    /// The source's importer (fall-back).
    pub source: Option<Stream>,
}

impl Default for ImporterDirectives {
    fn default() -> Self {
        ImporterDirectives {
            target: Some(Stream::Source),
            source_replica: Some(Stream::Source),
            source: None,
        }
    }
}

impl ImporterDirectives {
    /// The directive of `destination`'s importer.
    pub fn get(&self, destination: Destination) -> Option<Stream> {
        match destination {
            Destination::Target => self.target,
            Destination::SourceReplica => self.source_replica,
            Destination::Source => self.source,
        }
    }

    /// Sets the directive of `destination`'s importer.
    pub fn set(&mut self, destination: Destination, stream: Option<Stream>) {
        match destination {
            Destination::Target => self.target = stream,
            Destination::SourceReplica => self.source_replica = stream,
            Destination::Source => self.source = stream,
        }
    }
}

/// The migration status record, written only by the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// `migration.id`.
    pub migration_id: String,
    /// The workflow (fixed by the cutover to target request).
    #[serde(default)]
    pub workflow: Workflow,
    /// The source stream's exporter.
    pub source_stream: StreamDirective,
    /// The target stream's exporter.
    pub target_stream: StreamDirective,
    /// Which stream each importer applies.
    pub importers: ImporterDirectives,
    /// Cutover to target.
    #[serde(default)]
    pub cutover_to_target: Cutover,
    /// Cutover to source-replica (fall-forward).
    #[serde(default)]
    pub cutover_to_source_replica: Cutover,
    /// Cutover to source (fall-back).
    #[serde(default)]
    pub cutover_to_source: Cutover,
    /// Set by `ferry end migration`: every service stops its work.
    #[serde(default)]
    pub ended_at_ms: Option<i64>,
    /// When the coordinator wrote this record.
    #[serde(default)]
    pub updated_at_ms: i64,
}

impl Default for MigrationStatus {
    fn default() -> Self {
        MigrationStatus {
            migration_id: String::new(),
            workflow: Workflow::Live,
            source_stream: StreamDirective {
                phase: StreamPhase::Run,
                first_vsn: Vsn(1),
            },
            target_stream: StreamDirective::default(),
            importers: ImporterDirectives::default(),
            cutover_to_target: Cutover::default(),
            cutover_to_source_replica: Cutover::default(),
            cutover_to_source: Cutover::default(),
            ended_at_ms: None,
            updated_at_ms: 0,
        }
    }
}

impl MigrationStatus {
    /// The directive of `stream`'s exporter.
    pub fn stream(&self, stream: Stream) -> &StreamDirective {
        match stream {
            Stream::Source => &self.source_stream,
            Stream::Target => &self.target_stream,
        }
    }

    /// The directive of `stream`'s exporter, to change.
    pub fn stream_mut(&mut self, stream: Stream) -> &mut StreamDirective {
        match stream {
            Stream::Source => &mut self.source_stream,
            Stream::Target => &mut self.target_stream,
        }
    }

    /// The cutover to `destination`.
    pub fn cutover(&self, destination: Destination) -> &Cutover {
        match destination {
            Destination::Target => &self.cutover_to_target,
            Destination::SourceReplica => &self.cutover_to_source_replica,
            Destination::Source => &self.cutover_to_source,
        }
    }

    /// The cutover to `destination`, to change.
    pub fn cutover_mut(&mut self, destination: Destination) -> &mut Cutover {
        match destination {
            Destination::Target => &mut self.cutover_to_target,
            Destination::SourceReplica => &mut self.cutover_to_source_replica,
            Destination::Source => &mut self.cutover_to_source,
        }
    }

    /// As stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A sequence's state, recorded when a stream stops and set on the new primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceValue {
    /// Schema.
    pub schema: String,
    /// Sequence name.
    pub name: String,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`: false when `nextval` was never called (the next value is
    /// `last_value` itself).
    pub is_called: bool,
}

/// What a stream's exporter leaves when it stops for a cutover: everything the
/// importers must reach and the new primary must continue from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExporterFinal {
    /// The stream.
    pub stream: Stream,
    /// The database position the stream was exported up to.
    pub lsn: Lsn,
    /// The last VSN of the stream (`Vsn::ZERO`: none).
    pub last_vsn: Vsn,
    /// Per table topic, per partition (by index): the offset after the last event.
    pub end_offsets: BTreeMap<String, Vec<i64>>,
    /// The sequences of the exported schemas.
    pub sequences: Vec<SequenceValue>,
    /// Changes committed after the stop marker that the exporter saw before it stopped
    /// reading (it reads on until it has caught up with the database, a few seconds at
    /// most): not exported, they stay where they were written. A lower bound when the
    /// application kept writing.
    #[serde(default)]
    pub after_stop_events: u64,
    /// When it was written.
    pub written_at_ms: i64,
}

/// What `_state` holds, as one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateView {
    /// The MSR (the default one while the coordinator has not written any).
    pub msr: MigrationStatus,
    /// True when the coordinator has written an MSR.
    pub msr_written: bool,
    /// Exporter checkpoints by stream.
    pub checkpoints: HashMap<Stream, ExporterCheckpoint>,
    /// Final records by stream.
    pub finals: HashMap<Stream, ExporterFinal>,
}

impl StateView {
    /// Builds the view from the latest value of every key.
    pub fn from_records(records: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let mut view = StateView::default();
        for (key, value) in records {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            if key == MSR_KEY {
                if let Ok(msr) = serde_json::from_slice::<MigrationStatus>(value) {
                    view.msr = msr;
                    view.msr_written = true;
                }
                continue;
            }
            for stream in [Stream::Source, Stream::Target] {
                if key == crate::checkpoint::checkpoint_key(stream) {
                    if let Ok(cp) = ExporterCheckpoint::from_json(value) {
                        view.checkpoints.insert(stream, cp);
                    }
                } else if key == final_key(stream) {
                    if let Ok(f) = serde_json::from_slice::<ExporterFinal>(value) {
                        view.finals.insert(stream, f);
                    }
                }
            }
        }
        view
    }
}

/// Tails `topic` (`_state`) on a background thread until `shutdown`: the receiver
/// first holds `None`, then, once the topic was read up to the end it had when the
/// call was made, the view, refreshed whenever a record arrives. A topic that does not
/// exist yet reads as empty.
pub fn watch(
    config: &ClientConfig,
    topic: &str,
    shutdown: Shutdown,
) -> tokio_watch::Receiver<Option<StateView>> {
    tail_compacted(config, topic, shutdown, StateView::from_records)
}

/// Waits for the first complete view (or `None` on shutdown).
pub async fn first_view(
    rx: &mut tokio_watch::Receiver<Option<StateView>>,
    shutdown: &mut Shutdown,
) -> Option<StateView> {
    tokio::select! {
        biased;
        _ = shutdown.wait() => None,
        r = rx.wait_for(Option::is_some) => r.ok().and_then(|v| v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(1_795_472_170_000), "2026-11-23T22:16:10Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn defaults_say_what_runs_before_any_cutover() {
        let view = StateView::from_records(&HashMap::new());
        assert!(!view.msr_written);
        assert_eq!(view.msr.source_stream.phase, StreamPhase::Run);
        assert_eq!(view.msr.target_stream.phase, StreamPhase::Standby);
        assert_eq!(
            view.msr.importers.get(Destination::Target),
            Some(Stream::Source)
        );
        assert_eq!(
            view.msr.importers.get(Destination::SourceReplica),
            Some(Stream::Source)
        );
        assert_eq!(view.msr.importers.get(Destination::Source), None);
    }

    #[test]
    fn records_round_trip_through_the_view() {
        let mut msr = MigrationStatus {
            migration_id: "m".into(),
            ..MigrationStatus::default()
        };
        msr.cutover_mut(Destination::Target).status = CutoverStatus::Initiated;
        msr.importers.set(Destination::Source, Some(Stream::Target));
        let fin = ExporterFinal {
            stream: Stream::Source,
            lsn: Lsn(5),
            last_vsn: Vsn(9),
            end_offsets: BTreeMap::from([("t".to_owned(), vec![3, 0])]),
            sequences: vec![SequenceValue {
                schema: "public".into(),
                name: "s".into(),
                last_value: 7,
                is_called: true,
            }],
            after_stop_events: 0,
            written_at_ms: 1,
        };
        let mut records = HashMap::new();
        records.insert(MSR_KEY.as_bytes().to_vec(), msr.to_json());
        records.insert(
            final_key(Stream::Source).into_bytes(),
            serde_json::to_vec(&fin).unwrap(),
        );
        let view = StateView::from_records(&records);
        assert!(view.msr_written);
        assert_eq!(view.msr, msr);
        assert_eq!(view.finals.get(&Stream::Source), Some(&fin));
        let text = String::from_utf8(msr.to_json()).unwrap();
        assert!(text.contains("\"INITIATED\""), "{text}");
    }
}
