//! The exporter checkpoint: the record an exporter keeps in `<prefix>._state` under the
//! key `exporter.<stream>`, as JSON.
//!
//! Rules (DESIGN.md §4): a checkpoint is written only after Kafka acknowledged every
//! event stamped before it; the source position it names (the slot's flush LSN) is
//! confirmed to the source only after the checkpoint is stored. `next_vsn` is the VSN
//! the first event after `lsn` gets when the stream is replayed from there, so replayed
//! changes are stamped with the same VSNs. A snapshot chunk that is not `done` is redone
//! from a newer snapshot, with VSNs above every VSN already in the stream's topics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::position::{Lsn, Vsn};
use crate::topics::Stream;

/// The `_state` key of a stream's exporter checkpoint.
pub fn checkpoint_key(stream: Stream) -> String {
    format!("exporter.{stream}")
}

/// Where an exporter is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExporterCheckpoint {
    /// The replication slot this checkpoint belongs to.
    pub slot: String,
    /// Source position: the change stream resumes after this LSN (the end of the last
    /// transaction whose events are all acknowledged).
    pub lsn: Lsn,
    /// The VSN of the next event after `lsn`.
    pub next_vsn: Vsn,
    /// Snapshot progress.
    pub snapshot: SnapshotProgress,
    /// Events in the stream per table (`schema.table`) and kind, up to `next_vsn`.
    #[serde(default)]
    pub counts: BTreeMap<String, OpCounts>,
    /// When it was written, milliseconds since the epoch.
    pub written_at_ms: i64,
}

/// Events of one table by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Snapshot rows (`r`).
    pub snapshot_rows: u64,
    /// Inserts (`c`).
    pub inserts: u64,
    /// Updates (`u`).
    pub updates: u64,
    /// Deletes (`d`).
    pub deletes: u64,
}

impl OpCounts {
    /// All events.
    pub fn total(&self) -> u64 {
        self.snapshot_rows + self.inserts + self.updates + self.deletes
    }
}

/// Per-table snapshot progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// True once every selected table was read completely (or no snapshot is taken).
    pub done: bool,
    /// By `schema.table`; absent tables have not been planned yet.
    #[serde(default)]
    pub tables: BTreeMap<String, TableProgress>,
}

/// The chunks of one table and which of them are in Kafka.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableProgress {
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
    /// `done[i]` is true once chunk `i` is completely acknowledged.
    pub done: Vec<bool>,
}

impl TableProgress {
    /// True when every chunk is done.
    pub fn is_done(&self) -> bool {
        !self.chunks.is_empty() && self.done.iter().all(|d| *d)
    }
}

/// A range of heap blocks: rows whose `ctid` lies in `[start_block, end_block)`;
/// `end_block: None` is open-ended (the last chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// First block.
    pub start_block: u32,
    /// Block after the last, or `None` for the rest of the table.
    pub end_block: Option<u32>,
}

impl ExporterCheckpoint {
    /// As stored in `_state`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// From the stored bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let mut tables = BTreeMap::new();
        tables.insert(
            "public.t".to_owned(),
            TableProgress {
                chunks: vec![
                    Chunk {
                        start_block: 0,
                        end_block: Some(10),
                    },
                    Chunk {
                        start_block: 10,
                        end_block: None,
                    },
                ],
                done: vec![true, false],
            },
        );
        let c = ExporterCheckpoint {
            slot: "ferry_m_source".into(),
            lsn: Lsn(0x1_0000_0010),
            next_vsn: Vsn(42),
            snapshot: SnapshotProgress {
                done: false,
                tables,
            },
            counts: BTreeMap::new(),
            written_at_ms: 5,
        };
        let json = c.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"lsn\":\"1/10\""), "{text}");
        assert!(text.contains("\"next_vsn\":42"), "{text}");
        assert_eq!(ExporterCheckpoint::from_json(&json).unwrap(), c);
        assert!(!c.snapshot.tables["public.t"].is_done());
        assert_eq!(checkpoint_key(Stream::Source), "exporter.source");
    }
}

/// The last error of a service instance, as its heartbeats carry it: a definite one
/// (the instance stopped; the message names the object and the fix) or a transient one
/// (it retries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceError {
    /// `definite` (stopped until the operator acts) or `transient` (retrying).
    pub kind: String,
    /// What happened, the object and what to do (never a password or a row's values).
    pub message: String,
    /// When, milliseconds since the epoch.
    pub at_ms: i64,
}

impl ServiceError {
    /// A definite error: the instance stops.
    pub fn definite(message: impl Into<String>) -> Self {
        ServiceError {
            kind: "definite".into(),
            message: message.into(),
            at_ms: crate::state::now_ms(),
        }
    }

    /// A transient error: the instance retries.
    pub fn transient(message: impl Into<String>) -> Self {
        ServiceError {
            kind: "transient".into(),
            message: message.into(),
            at_ms: crate::state::now_ms(),
        }
    }
}

/// An exporter's heartbeat in `<prefix>._status` (key: [`heartbeat_key`]), JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExporterHeartbeat {
    /// Always `exporter`.
    pub role: String,
    /// The stream it produces.
    pub stream: Stream,
    /// `host:pid` of the process.
    pub instance: String,
    /// `starting`, `snapshot`, `streaming`, `stopped` (it exited cleanly) or `failed`
    /// (it exited on `error`).
    pub phase: String,
    /// Source position of the last stored checkpoint.
    pub lsn: Lsn,
    /// The last VSN stamped (every event of the stream counts, including re-read
    /// snapshot chunks).
    pub last_vsn: Vsn,
    /// Events produced by this run.
    pub events_this_run: u64,
    /// Events per second over the last 3 minutes (or since the start, if shorter).
    pub rate_3m: f64,
    /// Events per second over the last 10 minutes (or since the start, if shorter).
    pub rate_10m: f64,
    /// When it was sent, milliseconds since the epoch.
    pub at_ms: i64,
    /// When the process started, milliseconds since the epoch.
    #[serde(default)]
    pub started_at_ms: i64,
    /// Its last error (until it runs again without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ServiceError>,
}

/// The `_status` key of a stream's exporter heartbeat.
pub fn heartbeat_key(stream: Stream) -> String {
    format!("exporter.{stream}")
}

/// An importer's heartbeat in `<prefix>._status` (key: [`importer_heartbeat_key`]), JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImporterHeartbeat {
    /// Always `importer`.
    pub role: String,
    /// target, source-replica or source.
    pub destination: String,
    /// The consumer group.
    pub group: String,
    /// `applying`, `standby` (no stream to apply yet, or paused after a cutover),
    /// `stopped` (it exited cleanly) or `failed` (it exited on `error`).
    #[serde(default)]
    pub phase: String,
    /// The stream it applies (`None` while waiting).
    #[serde(default)]
    pub stream: Option<String>,
    /// This process (host and pid).
    pub instance: String,
    /// Events applied by all importers of the group (from `ferry_metadata`).
    pub total_imported: i64,
    /// Events applied by this process since it started.
    pub imported_this_run: u64,
    /// Events per second over the last 3 and 10 minutes.
    pub rate_3m: f64,
    /// See `rate_3m`.
    pub rate_10m: f64,
    /// Records the group has left to apply: the topics' ends minus the positions stored
    /// in the destination, over every partition of the stream (upper bound); what this
    /// process's own partitions have left when the group's could not be read.
    pub remaining: i64,
    /// Partitions this process holds now (0: the group gave it none, it applies nothing).
    #[serde(default)]
    pub partitions_held: u32,
    /// Stored positions of this process's partitions.
    pub positions: Vec<PartitionPosition>,
    /// When sent, milliseconds since the epoch.
    pub ts_ms: i64,
    /// When the process started, milliseconds since the epoch.
    #[serde(default)]
    pub started_at_ms: i64,
    /// Its last error: the definite one it stopped on, or the last transient one it
    /// retried (for a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ServiceError>,
}

/// One partition's applied position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to apply.
    pub next_offset: i64,
    /// Last applied VSN.
    pub last_vsn: u64,
}

/// The `_status` key of one importer process.
pub fn importer_heartbeat_key(destination: &str, instance: &str) -> String {
    format!("importer.{destination}.{instance}")
}
