//! Heartbeats: what each exporter and importer instance publishes to `<prefix>._status`
//! every few seconds (JSON, compacted by key), for the coordinator's status, metrics
//! and cutover messages. A heartbeat is a report, never a position: positions live in
//! checkpoints (`_state`) and in the destination's `ferry_metadata`.
//!
//! Errors outlive the process that met them: an instance that stops on a definite or
//! fatal error also writes an [`ErrorRecord`] under a key of its own ([`error_key`]),
//! which no later heartbeat overwrites (a restarted container keeps its host name and
//! pid 1, so its first heartbeat would replace the failed one under the same key). The
//! coordinator shows the error until an instance of the same unit (the same stream's
//! exporter, an importer of the same destination) reports, with `ok_at_ms`, that it ran
//! successfully after the error.

use serde::{Deserialize, Serialize};

use crate::position::{Lsn, Vsn};
use crate::topics::Stream;

/// The last error of a service instance, as its heartbeats carry it: a definite or
/// fatal one (the instance stopped; the message names the object and the fix) or a
/// transient one (it retries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceError {
    /// `definite` or `fatal` (stopped until the operator acts) or `transient`
    /// (retrying), as [`crate::error_policy::ErrorClass::as_str`] says.
    pub kind: String,
    /// What happened, the object and what to do (never a password or a row's values).
    pub message: String,
    /// When, milliseconds since the epoch.
    pub at_ms: i64,
}

impl ServiceError {
    /// An error of `class`, now.
    pub fn of(class: crate::error_policy::ErrorClass, message: impl Into<String>) -> Self {
        ServiceError {
            kind: class.as_str().into(),
            message: message.into(),
            at_ms: crate::clock::now_ms(),
        }
    }

    /// Whether the instance retries (it did not stop on it).
    pub fn is_transient(&self) -> bool {
        self.kind == crate::error_policy::ErrorClass::Transient.as_str()
    }

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
    /// Its last error, until this process runs successfully again (a transient one while
    /// it retries: phase `retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ServiceError>,
    /// When this process last did its work successfully (reached `snapshot`,
    /// `streaming` or `standby`, stored a checkpoint); 0: not yet. Clears every error
    /// of this stream's exporters that happened before it.
    #[serde(default)]
    pub ok_at_ms: i64,
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
    /// Its last error: the definite or fatal one it stopped on, or the transient one it
    /// retries (phase `retrying`), until it runs successfully again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ServiceError>,
    /// When this process last did its work successfully (a batch committed, or a session
    /// applying for a while without a failure); 0: not yet. Clears every error of this
    /// destination's importers that happened before it.
    #[serde(default)]
    pub ok_at_ms: i64,
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

/// The error an exporter or importer instance stopped on, in `<prefix>._status` under
/// [`error_key`] (JSON). Never overwritten by heartbeats; shown until an instance of the
/// same `role` and `unit` reports `ok_at_ms` after `error.at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// `exporter` or `importer`.
    pub role: String,
    /// The stream an exporter produces, or the destination an importer writes.
    pub unit: String,
    /// `host:pid` of the process.
    pub instance: String,
    /// The error.
    pub error: ServiceError,
}

/// Prefix of every [`ErrorRecord`] key.
pub const ERROR_KEY_PREFIX: &str = "error.";

/// The `_status` key of the error an instance stopped on.
pub fn error_key(role: &str, unit: &str, instance: &str) -> String {
    format!("{ERROR_KEY_PREFIX}{role}.{unit}.{instance}")
}

/// `host:pid`, naming this process in heartbeats and error records (the kernel's host
/// name: `HOSTNAME` is a shell variable most shells do not export).
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Writes `record` to `status_topic` under its [`error_key`] and waits until the broker
/// has it, at most `within` (an unreachable broker must not hold a process's exit).
/// Returns whether it was written.
pub async fn publish_error(
    kafka: &rdkafka::ClientConfig,
    status_topic: &str,
    record: &ErrorRecord,
    within: std::time::Duration,
) -> bool {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Ok(producer) = kafka.create::<FutureProducer>() else {
        return false;
    };
    let Ok(json) = serde_json::to_vec(record) else {
        return false;
    };
    let key = error_key(&record.role, &record.unit, &record.instance);
    let sent = tokio::time::timeout(
        within,
        producer.send(
            FutureRecord::to(status_topic).key(&key).payload(&json),
            within,
        ),
    )
    .await;
    matches!(sent, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_policy::ErrorClass;

    #[test]
    fn errors_carry_their_class_and_records_round_trip() {
        let e = ServiceError::of(ErrorClass::Fatal, "broken");
        assert_eq!(e.kind, "fatal");
        assert!(!e.is_transient());
        assert!(ServiceError::transient("x").is_transient());
        let r = ErrorRecord {
            role: "importer".into(),
            unit: "target".into(),
            instance: "h:1".into(),
            error: e,
        };
        let json = serde_json::to_vec(&r).unwrap_or_default();
        assert_eq!(serde_json::from_slice::<ErrorRecord>(&json).ok(), Some(r));
        assert_eq!(
            error_key("importer", "target", "h:1"),
            "error.importer.target.h:1"
        );
    }
}
