//! Turning rows into framed Kafka records, everywhere except the VSN.
//!
//! Snapshot readers and the change stream encode events in parallel; only the single
//! stamping task (the exporter's sequencer) knows VSNs. An Avro record is the concatenation of
//! its fields, and `vsn` is the first field of the envelope, so an event is encoded as a
//! head (the 5-byte framing, then `before`, `after`, `op`, `ts_ms`) and a tail (`source`);
//! the stamper writes framing + vsn + the rest of the head + tail.

use std::sync::Arc;

use crate::avro::{self, AvroError, AvroType};
use crate::catalog::TableSchema;
use crate::clock::now_ms;
use crate::envelope::{ChangeEvent, Op, SourceInfo};
use crate::kafka::partition_for_key;
use crate::position::Vsn;
use crate::registry::{RegistryClient, RegistryError};
use crate::topics;
use crate::value::Datum;

use super::{write_header, FRAMING};

/// One table's topic, schemas and partitioning.
#[derive(Debug)]
pub struct TableEncoder {
    /// The table.
    pub table: TableSchema,
    /// `schema.table`, as in checkpoints.
    pub name: String,
    /// Index of the table's topic in the stamper's topic list.
    pub topic_index: usize,
    /// The topic.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Database name, for `source.db`.
    pub db: String,
    key_id: u32,
    value_id: u32,
    key_type: AvroType,
    value_fields: Vec<AvroType>,
    /// `db`, `schema` and `table` of `source`, encoded once, when the writer schema's
    /// `source` has Ferry's layout ([`source_prefix`]); `None`: encoded generically.
    source_prefix: Option<Vec<u8>>,
}

/// `db`, `schema` and `table` of `source` encoded, when `ty` (the writer schema's
/// `source`) has Ferry's layout: `db`, `schema`, `table`, `snapshot`, `lsn_or_scn`,
/// `txid` (`[null, long]`), `commit_ts_ms`; `None` otherwise.
fn source_prefix(ty: &AvroType, db: &str, schema: &str, table: &str) -> Option<Vec<u8>> {
    let AvroType::Record(record) = ty else {
        return None;
    };
    let types: Vec<&AvroType> = record.fields.iter().map(|f| &f.ty).collect();
    let layout = [
        &AvroType::String,
        &AvroType::String,
        &AvroType::String,
        &AvroType::Boolean,
        &AvroType::String,
        &AvroType::Union(vec![AvroType::Null, AvroType::Long]),
        &AvroType::Long,
    ];
    if types != layout {
        return None;
    }
    let mut prefix = Vec::new();
    for text in [db, schema, table] {
        avro::write_bytes(text.as_bytes(), &mut prefix);
    }
    Some(prefix)
}

/// The encoded `source`: `prefix` from [`source_prefix`], then the fields of one
/// snapshot or transaction.
fn write_source_tail(prefix: &[u8], snapshot: bool, source: &SourceTemplate<'_>) -> Vec<u8> {
    let mut tail = Vec::with_capacity(prefix.len() + source.lsn.len() + 24);
    tail.extend_from_slice(prefix);
    tail.push(u8::from(snapshot));
    avro::write_bytes(source.lsn.as_bytes(), &mut tail);
    match source.txid {
        None => avro::write_long(0, &mut tail),
        Some(txid) => {
            avro::write_long(1, &mut tail);
            avro::write_long(txid, &mut tail);
        }
    }
    avro::write_long(source.commit_ts_ms, &mut tail);
    tail
}

/// An encoded event waiting for its VSN.
#[derive(Debug)]
pub struct Pending {
    /// Index of the topic (and of the table in the stamper's table list).
    pub topic_index: usize,
    /// What happened to the row (counted per table in the checkpoint).
    pub op: Op,
    /// Partition (murmur2 of the framed key).
    pub partition: i32,
    /// Framed key.
    pub key: Vec<u8>,
    /// The 5-byte framing, then `before`, `after`, `op`, `ts_ms` (the VSN goes between).
    pub head: Vec<u8>,
    /// `source` (shared by the events of a snapshot or a transaction).
    pub tail: Arc<[u8]>,
}

impl TableEncoder {
    /// Registers the table's schemas (under `<topic>-key` and `<topic>-value`) and
    /// prepares its encoder.
    pub async fn new(
        registry: &RegistryClient,
        table: TableSchema,
        topic: String,
        topic_index: usize,
        partitions: i32,
        db: String,
    ) -> Result<TableEncoder, RegistryError> {
        let key_schema = avro::key_schema(&table).to_string();
        let value_schema = avro::value_schema(&table).to_string();
        let key_id = registry
            .register(&topics::key_subject(&topic), &key_schema)
            .await?;
        let value_id = registry
            .register(&topics::value_subject(&topic), &value_schema)
            .await?;
        let key_type = avro::parse_schema(&key_schema)?;
        let value_type = avro::parse_schema(&value_schema)?;
        let AvroType::Record(record) = value_type else {
            return Err(RegistryError::Envelope(
                "value schema is not a record".into(),
            ));
        };
        let value_fields: Vec<AvroType> = record.fields.iter().map(|f| f.ty.clone()).collect();
        if value_fields.len() != 6
            || record.fields[0].name != "vsn"
            || value_fields[0] != AvroType::Long
            || value_fields[3] != AvroType::String
            || value_fields[4] != AvroType::Long
        {
            return Err(RegistryError::Envelope(
                "value schema does not have the envelope layout".into(),
            ));
        }
        let source_prefix = source_prefix(&value_fields[5], &db, &table.schema, &table.name);
        Ok(TableEncoder {
            name: format!("{}.{}", table.schema, table.name),
            table,
            topic_index,
            topic,
            partitions,
            db,
            key_id,
            value_id,
            key_type,
            value_fields,
            source_prefix,
        })
    }

    /// The primary-key values of a row, in key order.
    pub fn key_of(&self, row: &[Datum]) -> Vec<Datum> {
        self.table
            .primary_key
            .iter()
            .map(|&i| row.get(i).cloned().unwrap_or(Datum::Null))
            .collect()
    }

    /// The encoded `source` of this table's events: the same for every event of a
    /// snapshot, and of a transaction.
    pub fn source_tail(
        &self,
        snapshot: bool,
        source: SourceTemplate<'_>,
    ) -> Result<Arc<[u8]>, AvroError> {
        // Written straight from the fields, without a value tree and copies of the
        // names: this runs once per transaction, so per event under one-row
        // transactions, where it was several percent of the exporter's CPU.
        if let Some(prefix) = &self.source_prefix {
            return Ok(write_source_tail(prefix, snapshot, &source).into());
        }
        self.source_tail_generic(snapshot, source)
    }

    /// [`TableEncoder::source_tail`] through the generic encoder, for a writer schema
    /// whose `source` is not in Ferry's layout.
    fn source_tail_generic(
        &self,
        snapshot: bool,
        source: SourceTemplate<'_>,
    ) -> Result<Arc<[u8]>, AvroError> {
        let datum = SourceInfo {
            db: self.db.clone(),
            schema: self.table.schema.clone(),
            table: self.table.name.clone(),
            snapshot,
            lsn_or_scn: source.lsn.to_owned(),
            txid: source.txid,
            commit_ts_ms: source.commit_ts_ms,
        }
        .to_datum();
        let mut tail = Vec::with_capacity(64);
        avro::encode(&self.value_fields[5], &datum, &mut tail)?;
        Ok(tail.into())
    }

    /// Encodes one change event (the VSN is stamped later). `key` holds the key's
    /// values in key order; `tail` comes from [`TableEncoder::source_tail`].
    pub fn encode(
        &self,
        op: Op,
        key: &[Datum],
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        tail: &Arc<[u8]>,
    ) -> Result<Pending, AvroError> {
        self.encode_with(op, key.iter(), before, after, tail, now_ms())
    }

    /// Encodes a snapshot row (op `r`): the key is read from the row itself. `ts_ms` is
    /// the envelope's time, taken by the caller once for many rows (a clock read per row
    /// was about 1 % of the snapshot's CPU).
    pub fn encode_snapshot_row(
        &self,
        row: &[Datum],
        tail: &Arc<[u8]>,
        ts_ms: i64,
    ) -> Result<Pending, AvroError> {
        let key = self
            .table
            .primary_key
            .iter()
            .map(|&i| row.get(i).unwrap_or(&Datum::Null));
        self.encode_with(Op::Read, key, None, Some(row), tail, ts_ms)
    }

    /// The framed key and value of a whole event, its VSN and `source` as given (the
    /// same bytes the exporter produces for it, but for `ts_ms`, which is taken now):
    /// for tests and tools that write events of their own.
    pub fn encode_event(&self, event: &ChangeEvent) -> Result<(Vec<u8>, Vec<u8>), AvroError> {
        let mut tail = Vec::with_capacity(64);
        avro::encode(&self.value_fields[5], &event.source.to_datum(), &mut tail)?;
        let tail: Arc<[u8]> = tail.into();
        let pending = self.encode(
            event.op,
            &event.key,
            event.before.as_deref(),
            event.after.as_deref(),
            &tail,
        )?;
        let mut value = Vec::new();
        stamp(&pending, event.vsn, &mut value);
        Ok((pending.key, value))
    }

    fn encode_with<'a>(
        &self,
        op: Op,
        key: impl ExactSizeIterator<Item = &'a Datum>,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        tail: &Arc<[u8]>,
        ts_ms: i64,
    ) -> Result<Pending, AvroError> {
        let mut framed_key = Vec::with_capacity(32);
        write_header(self.key_id, &mut framed_key);
        let AvroType::Record(key_record) = &self.key_type else {
            return Err(AvroError::Mismatch("key schema is not a record".into()));
        };
        if key_record.fields.len() != key.len() {
            return Err(AvroError::Mismatch(format!(
                "key record has {} fields, the key {}",
                key_record.fields.len(),
                key.len()
            )));
        }
        for (field, value) in key_record.fields.iter().zip(key) {
            avro::encode_field(field, value, &mut framed_key)?;
        }
        let mut head = Vec::with_capacity(16 + 24 * after.or(before).map_or(0, <[Datum]>::len));
        write_header(self.value_id, &mut head);
        avro::encode_optional_row(&self.value_fields[1], before, &mut head)?;
        avro::encode_optional_row(&self.value_fields[2], after, &mut head)?;
        // `op` (string) and `ts_ms` (long), checked in `new`.
        avro::write_bytes(op.code().as_bytes(), &mut head);
        avro::write_long(ts_ms, &mut head);
        Ok(Pending {
            topic_index: self.topic_index,
            op,
            partition: partition_for_key(&framed_key, self.partitions),
            key: framed_key,
            head,
            tail: tail.clone(),
        })
    }
}

/// The transaction-level part of `source`.
#[derive(Clone, Copy, Debug)]
pub struct SourceTemplate<'a> {
    /// Commit LSN (changes) or the snapshot's LSN.
    pub lsn: &'a str,
    /// Transaction id.
    pub txid: Option<i64>,
    /// Commit time.
    pub commit_ts_ms: i64,
}

/// Appends framing + vsn + the rest of the head + tail, the complete framed value, to
/// `out` (the stamper gathers a batch's values in one buffer).
pub fn stamp(pending: &Pending, vsn: Vsn, out: &mut Vec<u8>) {
    let (framing, rest) = pending.head.split_at(FRAMING.min(pending.head.len()));
    out.extend_from_slice(framing);
    // Avro long: zigzag varint.
    let mut n = ((vsn.as_i64() << 1) ^ (vsn.as_i64() >> 63)) as u64;
    loop {
        if n & !0x7f == 0 {
            out.push(n as u8);
            break;
        }
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&pending.tail);
}

/// Shared handle.
pub type Encoders = Vec<Arc<TableEncoder>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::one_bigint_table;

    #[test]
    fn the_source_tail_written_directly_is_the_generic_encoding() {
        let table = one_bigint_table();
        let AvroType::Record(value) =
            avro::parse_schema(&avro::value_schema(&table).to_string()).unwrap()
        else {
            panic!("the value schema is a record");
        };
        let source_type = &value.fields[5].ty;
        let prefix = source_prefix(source_type, "shop", "public", "t").unwrap();
        for (snapshot, lsn, txid, commit) in [
            (true, "16/B374D848", None, 1_700_000_000_000),
            (false, "0/1", Some(0), 0),
            (false, "FFFFFFFF/FFFFFFFF", Some(i64::MAX), -1),
            (false, "", Some(-5), i64::MIN),
        ] {
            let direct = write_source_tail(
                &prefix,
                snapshot,
                &SourceTemplate {
                    lsn,
                    txid,
                    commit_ts_ms: commit,
                },
            );
            let datum = SourceInfo {
                db: "shop".into(),
                schema: "public".into(),
                table: "t".into(),
                snapshot,
                lsn_or_scn: lsn.into(),
                txid,
                commit_ts_ms: commit,
            }
            .to_datum();
            let mut generic = Vec::new();
            avro::encode(source_type, &datum, &mut generic).unwrap();
            assert_eq!(direct, generic, "{lsn} {txid:?}");
        }
        // Another layout is encoded generically.
        assert!(source_prefix(&AvroType::Long, "a", "b", "c").is_none());
    }
}
