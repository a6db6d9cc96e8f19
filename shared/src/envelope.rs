//! The change event (DESIGN.md §3): a key of primary-key columns and a Debezium-shaped
//! envelope `{before, after, op, ts_ms, vsn, source}`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::avro::RecordType;
use crate::position::Vsn;
use crate::value::Datum;

/// What happened to a row.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `r`: a row of a snapshot.
    Read,
    /// `c`: an insert.
    Create,
    /// `u`: an update.
    Update,
    /// `d`: a delete.
    Delete,
}

impl Op {
    /// The one-letter code in the envelope.
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }

    /// From the one-letter code.
    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "r" => Op::Read,
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            _ => return None,
        })
    }
}

/// Events of one table by kind: the one count type of exporters' checkpoints, the
/// importers' `ferry_metadata.table_counts` and the report.
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

    /// Counts one event of kind `op`.
    pub fn add(&mut self, op: Op) {
        *self.of_mut(op) += 1;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &OpCounts) {
        self.snapshot_rows += other.snapshot_rows;
        self.inserts += other.inserts;
        self.updates += other.updates;
        self.deletes += other.deletes;
    }

    fn of_mut(&mut self, op: Op) -> &mut u64 {
        match op {
            Op::Read => &mut self.snapshot_rows,
            Op::Create => &mut self.inserts,
            Op::Update => &mut self.updates,
            Op::Delete => &mut self.deletes,
        }
    }

    /// The four counts as PostgreSQL `bigint`s, in the order snapshot rows, inserts,
    /// updates, deletes (saturating; no count comes near `i64::MAX`).
    pub fn as_i64s(&self) -> [i64; 4] {
        [self.snapshot_rows, self.inserts, self.updates, self.deletes]
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Where an event came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// Database name.
    pub db: String,
    /// Schema of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// True for snapshot rows.
    pub snapshot: bool,
    /// The source position: an LSN (`16/B374D848`) or an Oracle SCN.
    pub lsn_or_scn: String,
    /// The source transaction id, when known.
    pub txid: Option<i64>,
    /// Commit time of the source transaction, milliseconds since the epoch.
    pub commit_ts_ms: i64,
}

/// One change to one row, as produced by an exporter.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeEvent {
    /// Primary-key values, in key order (the Kafka key).
    pub key: Vec<Datum>,
    /// The row before (updates and deletes), all columns in table order.
    pub before: Option<Vec<Datum>>,
    /// The row after (snapshot rows, inserts, updates), all columns in table order.
    pub after: Option<Vec<Datum>>,
    /// What happened.
    pub op: Op,
    /// When the exporter produced it, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Its place in the stream.
    pub vsn: Vsn,
    /// Where it came from.
    pub source: SourceInfo,
}

impl ChangeEvent {
    /// The envelope as a record value in the layout of [`crate::avro::value_schema`].
    pub fn to_datum(&self) -> Datum {
        let row = |r: &Option<Vec<Datum>>| match r {
            Some(cols) => Datum::Record(cols.clone()),
            None => Datum::Null,
        };
        Datum::Record(vec![
            Datum::Long(self.vsn.as_i64()),
            row(&self.before),
            row(&self.after),
            Datum::String(self.op.code().to_owned()),
            Datum::Long(self.ts_ms),
            self.source.to_datum(),
        ])
    }
}

impl SourceInfo {
    /// The `source` record value in the layout of [`crate::avro::value_schema`].
    pub fn to_datum(&self) -> Datum {
        Datum::Record(vec![
            Datum::String(self.db.clone()),
            Datum::String(self.schema.clone()),
            Datum::String(self.table.clone()),
            Datum::Bool(self.snapshot),
            Datum::String(self.lsn_or_scn.clone()),
            self.txid.map_or(Datum::Null, Datum::Long),
            Datum::Long(self.commit_ts_ms),
        ])
    }
}

/// An envelope read back from Kafka, with the writer schema's row layout so that values
/// can be matched to destination columns by name.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedEvent {
    /// The row record of the writer schema (column names in `FieldType::column`).
    pub row_type: Arc<RecordType>,
    /// The row before.
    pub before: Option<Vec<Datum>>,
    /// The row after.
    pub after: Option<Vec<Datum>>,
    /// What happened.
    pub op: Op,
    /// When the exporter produced it.
    pub ts_ms: i64,
    /// Its place in the stream.
    pub vsn: Vsn,
    /// Where it came from.
    pub source: SourceInfo,
}
