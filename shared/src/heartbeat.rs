//! Heartbeats: what each exporter and importer instance publishes to `<prefix>._status`
//! every few seconds (JSON, compacted by key), for the coordinator's status, metrics
//! and cutover messages. A heartbeat is a report, never a position: positions live in
//! checkpoints (`_state`) and in the destination's `ferry_metadata`.

use serde::{Deserialize, Serialize};

use crate::position::{Lsn, Vsn};
use crate::topics::Stream;

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
            at_ms: crate::clock::now_ms(),
        }
    }

    /// A transient error: the instance retries.
    pub fn transient(message: impl Into<String>) -> Self {
        ServiceError {
            kind: "transient".into(),
            message: message.into(),
            at_ms: crate::clock::now_ms(),
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
