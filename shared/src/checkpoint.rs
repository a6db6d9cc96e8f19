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

use crate::envelope::OpCounts;

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
