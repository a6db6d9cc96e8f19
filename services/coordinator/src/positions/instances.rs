//! Which exporter and importer instances run, retry, stopped or failed, and their
//! current errors, from the heartbeats and error records of the status topic.

use std::collections::{BTreeMap, HashMap};

use ferry_shared::heartbeat::{
    ErrorRecord, ExporterHeartbeat, ImporterHeartbeat, ServiceError, ERROR_KEY_PREFIX,
};
use ferry_shared::topics::Stream;
use serde::{Deserialize, Serialize};

/// A heartbeat older than this means the service is not running.
pub const STALE_MS: i64 = 60_000;

/// The latest heartbeat of every service instance, and the errors instances stopped on.
#[derive(Clone, Debug, Default)]
pub struct Heartbeats {
    /// By stream.
    pub exporters: HashMap<Stream, ExporterHeartbeat>,
    /// By destination, then instance.
    pub importers: HashMap<String, BTreeMap<String, ImporterHeartbeat>>,
    /// Every error record (`error.<role>.<unit>.<instance>`), current or superseded.
    pub errors: Vec<ErrorRecord>,
}

impl Heartbeats {
    /// From the latest value of every `_status` key.
    pub fn from_records(records: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let mut out = Heartbeats::default();
        for (key, value) in records {
            if key.starts_with(ERROR_KEY_PREFIX.as_bytes()) {
                if let Ok(r) = serde_json::from_slice::<ErrorRecord>(value) {
                    out.errors.push(r);
                }
                continue;
            }
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
        // An importer's last heartbeat and its stop come from two producers: a
        // heartbeat sent before the stop can land after the failed one and replace it.
        // The stop recorded after that heartbeat is what the instance did last.
        for r in out.errors.iter().filter(|r| r.role == "importer") {
            let beat = out
                .importers
                .get_mut(&r.unit)
                .and_then(|b| b.get_mut(&r.instance));
            if let Some(h) = beat {
                if h.ts_ms <= r.error.at_ms && h.phase != "failed" && h.phase != "stopped" {
                    h.phase = "failed".to_owned();
                    h.error = Some(r.error.clone());
                }
            }
        }
        out
    }

    /// When an instance of `role` for `unit` (a stream's exporter, a destination's
    /// importers) last reported that it ran successfully; 0: never.
    pub fn ok_at_ms(&self, role: &str, unit: &str) -> i64 {
        match role {
            "exporter" => self
                .exporters
                .values()
                .filter(|b| b.stream.as_str() == unit)
                .map(|b| b.ok_at_ms)
                .max()
                .unwrap_or(0),
            _ => self
                .importers
                .get(unit)
                .and_then(|b| b.values().map(|h| h.ok_at_ms).max())
                .unwrap_or(0),
        }
    }

    /// Every error that is current now (see [`InstanceError`]), newest first: each error
    /// an instance stopped on until an instance of its unit ran successfully after it,
    /// and the transient error of every live instance that retries.
    pub fn current_errors(&self, now: i64) -> Vec<InstanceError> {
        let mut out: Vec<InstanceError> = Vec::new();
        let mut add = |e: InstanceError| {
            let same = |x: &InstanceError| {
                x.role == e.role
                    && x.unit == e.unit
                    && x.instance == e.instance
                    && x.error.kind == e.error.kind
                    && x.error.message == e.error.message
            };
            if !out.iter().any(same) {
                out.push(e);
            }
        };
        let mut stopped = |role: &str, unit: &str, instance: &str, error: &ServiceError| {
            if !error.is_transient() && error.at_ms > self.ok_at_ms(role, unit) {
                add(InstanceError {
                    role: role.to_owned(),
                    unit: unit.to_owned(),
                    instance: instance.to_owned(),
                    state: "failed".to_owned(),
                    error: error.clone(),
                });
            }
        };
        for r in &self.errors {
            stopped(&r.role, &r.unit, &r.instance, &r.error);
        }
        for b in self.exporters.values() {
            if let Some(e) = &b.error {
                stopped("exporter", b.stream.as_str(), &b.instance, e);
            }
        }
        for beats in self.importers.values() {
            for h in beats.values() {
                if let Some(e) = &h.error {
                    stopped("importer", &h.destination, &h.instance, e);
                }
            }
        }
        let mut retrying = |role: &str, unit: &str, instance: &str, error: &ServiceError| {
            if error.is_transient() {
                add(InstanceError {
                    role: role.to_owned(),
                    unit: unit.to_owned(),
                    instance: instance.to_owned(),
                    state: "retrying".to_owned(),
                    error: error.clone(),
                });
            }
        };
        for b in self.exporters.values() {
            if let (Some(e), true) = (&b.error, now - b.at_ms < STALE_MS) {
                retrying("exporter", b.stream.as_str(), &b.instance, e);
            }
        }
        for beats in self.importers.values() {
            for h in beats.values() {
                if let (Some(e), true) = (&h.error, now - h.ts_ms < STALE_MS) {
                    retrying("importer", &h.destination, &h.instance, e);
                }
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.error.at_ms));
        out
    }
}

/// An error status shows: of an exporter or importer instance, until an instance of the
/// same unit runs successfully after it (then it is gone), also after the process
/// exited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceError {
    /// `exporter` or `importer`.
    pub role: String,
    /// The stream an exporter produces or the destination an importer writes.
    pub unit: String,
    /// `host:pid`.
    pub instance: String,
    /// `failed` (it stopped on the error: definite or fatal) or `retrying` (transient,
    /// the instance retries).
    pub state: String,
    /// Kind, message (the object and the fix) and time.
    pub error: ServiceError,
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

impl InstanceState {
    /// True when it is up: `running`, `standby` or `retrying`.
    pub fn is_up(&self) -> bool {
        matches!(self.state.as_str(), "running" | "standby" | "retrying")
    }
}

/// The heartbeats of the instances that `states` ([`instance_states`]) show up: what
/// the status counts as instances and sums into rates, so that the count and the list
/// are one answer.
pub fn up_beats<'a>(
    beats: &'a BTreeMap<String, ImporterHeartbeat>,
    states: &[InstanceState],
) -> Vec<&'a ImporterHeartbeat> {
    states
        .iter()
        .filter(|s| s.is_up())
        .filter_map(|s| beats.get(&s.instance))
        .collect()
}

/// How long an instance that stopped, failed or went silent stays listed when no
/// instance of its group started after it.
pub const GONE_SHOWN_MS: i64 = 3_600_000;

/// The instances of one importer group worth showing: every live one (`retrying` when
/// it retries a transient error), every one whose error is current (`failed`, however
/// long ago, until an instance of the group runs successfully after it; also one known
/// only from its error record), and those that stopped or went silent unless an
/// instance started after them or it was over an hour ago. `errors` are the current
/// errors ([`Heartbeats::current_errors`]) of this group.
pub fn instance_states(
    beats: &BTreeMap<String, ImporterHeartbeat>,
    errors: &[InstanceError],
    now: i64,
) -> Vec<InstanceState> {
    let live = |h: &ImporterHeartbeat| {
        now - h.ts_ms < STALE_MS && h.phase != "failed" && h.phase != "stopped"
    };
    let failed_error = |instance: &str| {
        errors
            .iter()
            .find(|e| e.instance == instance && e.state == "failed")
            .map(|e| e.error.clone())
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
            // A stop recorded after the instance's last heartbeat already reads as
            // `failed` ([`Heartbeats::from_records`]).
            let current = failed_error(&h.instance);
            let state = if live(h) {
                match h.phase.as_str() {
                    "standby" => "standby",
                    "retrying" => "retrying",
                    _ => "running",
                }
            } else if current.is_some() {
                "failed"
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
                error: h.error.clone().or(current),
            })
        })
        .collect();
    for e in errors {
        if e.state == "failed" && !beats.contains_key(&e.instance) {
            out.push(InstanceState {
                instance: e.instance.clone(),
                state: "failed".to_owned(),
                last_seen_ms: e.error.at_ms,
                partitions_held: 0,
                error: Some(e.error.clone()),
            });
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.last_seen_ms));
    out
}
