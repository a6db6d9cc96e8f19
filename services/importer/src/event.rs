//! A change event as the importer applies it, decoded from its Kafka record.
//!
//! Decoding is driven by the writer schema the record names (fetched once per id from
//! the registry); a record Ferry can't read is a definite failure naming it.

use std::sync::Arc;

use ferry_shared::avro::{AvroType, RecordType};
use ferry_shared::catalog::TableName;
use ferry_shared::codec::EventDecoder;
use ferry_shared::envelope::Op;
use ferry_shared::position::Vsn;
use ferry_shared::value::Datum;

use crate::error::Failure;
use crate::sink::Counts;

/// One decoded event, ready to apply.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// Its place in the stream.
    pub vsn: Vsn,
    /// What happened.
    pub op: Op,
    /// The table it belongs to (the same name on the destination).
    pub table: Arc<TableName>,
    /// The writer schema's row layout.
    pub row_type: Arc<RecordType>,
    /// The row before (updates and deletes).
    pub before: Option<Vec<Datum>>,
    /// The row after.
    pub after: Option<Vec<Datum>>,
    /// The key record's layout (decoded for deletes only; empty otherwise).
    pub key_type: Arc<RecordType>,
    /// The key values (deletes only).
    pub key: Vec<Datum>,
}

impl Event {
    /// Decodes a record: its value, and for a delete its key (the other kinds carry the
    /// key's values in the row after). `at` names the record in errors. `table` is the
    /// table of the partition's last event: shared, not built again, while it stays the
    /// same.
    pub(crate) async fn decode(
        decoder: &EventDecoder,
        key: Option<&[u8]>,
        payload: &[u8],
        table: &mut Option<Arc<TableName>>,
        at: &(dyn Fn() -> String + Sync),
    ) -> Result<Event, Failure> {
        let decoded = decoder
            .decode_change(payload)
            .await
            .map_err(|e| crate::registry_failure(&e, &at()))?;
        let Some(key) = key else {
            return Err(Failure::Definite(format!(
                "record {} has no key; the stream is damaged",
                at()
            )));
        };
        let (key_type, key) = if decoded.op == Op::Delete {
            let (ty, datum) = decoder
                .decode_datum(key)
                .await
                .map_err(|e| crate::registry_failure(&e, &at()))?;
            match (ty.as_ref(), datum) {
                (AvroType::Record(rt), Datum::Record(values)) => (rt.clone(), values),
                _ => {
                    return Err(Failure::Definite(format!(
                        "record {} has a key that is not a record; the stream is damaged",
                        at()
                    )))
                }
            }
        } else {
            (no_key_type(), Vec::new())
        };
        let name = match table {
            Some(t) if t.schema == decoded.schema && t.name == decoded.table => t.clone(),
            _ => {
                let t = Arc::new(TableName {
                    schema: decoded.schema.to_owned(),
                    name: decoded.table.to_owned(),
                });
                *table = Some(t.clone());
                t
            }
        };
        Ok(Event {
            vsn: decoded.vsn,
            op: decoded.op,
            table: name,
            row_type: decoded.row_type,
            before: decoded.before,
            after: decoded.after,
            key_type,
            key,
        })
    }
}

/// The key layout of events whose key is not decoded.
fn no_key_type() -> Arc<RecordType> {
    static EMPTY: std::sync::OnceLock<Arc<RecordType>> = std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| {
            Arc::new(RecordType {
                name: String::new(),
                fields: Vec::new(),
            })
        })
        .clone()
}

/// Counts of a table's events by op.
pub(crate) fn count(events: &[Event]) -> Counts {
    let mut c = Counts::default();
    for e in events {
        c.add(e.op);
    }
    c
}
