//! A framed change record written straight from its Avro bytes as its JSON line (the
//! form of [`crate::json`]): what `ferry replay` to a file writes. No value tree is
//! built for the envelope or its rows: strings go from the bytes to the output, every
//! other value through one [`crate::value::Datum`] (which allocates nothing for
//! booleans, numbers, dates and times) written as [`crate::json`] writes it. The same
//! bytes as decoding the record and writing [`crate::json::EventJson`] (tested below).

use std::cell::RefCell;

use serde::ser::{Error as _, SerializeMap};
use serde::{Serialize, Serializer};

use super::decode::{read_op, read_vsn, Slot};
use super::{split_header, EventDecoder};
use crate::avro::{self, AvroError, AvroType, Reader, RecordType};
use crate::json::{DatumJson, EventParts};
use crate::registry::RegistryError;

impl EventDecoder {
    /// Appends the JSON line (without its newline) of the change record `key`/`value`
    /// to `out`; on an error `out` may hold part of it.
    pub async fn write_json_line(
        &self,
        key: &[u8],
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RegistryError> {
        let (id, body) = split_header(value)?;
        let plan = self.plan(id).await?;
        let (key_id, key_body) = split_header(key)?;
        let key_type = self.registry.schema(key_id).await?;
        let AvroType::Record(key_layout) = key_type.as_ref() else {
            return Err(RegistryError::Envelope("the key is not a record".into()));
        };
        let mut env = Envelope::default();
        let mut r = Reader::new(body);
        for (slot, ty) in &plan.fields {
            match slot {
                Slot::Before => env.before = row_bytes(ty, body, &mut r)?,
                Slot::After => env.after = row_bytes(ty, body, &mut r)?,
                Slot::Op => env.op = Some(read_op(&mut r)?.code()),
                Slot::Vsn => env.vsn = Some(read_vsn(&mut r)?.0),
                Slot::Source => {
                    let AvroType::Record(source) = ty else {
                        return Err(RegistryError::Envelope("no source record".into()));
                    };
                    env.source(source, &mut r)?;
                }
                Slot::Skip => avro::skip(ty, &mut r)?,
            }
        }
        let row = |bytes| AvroRow {
            layout: &plan.row_type,
            bytes,
        };
        let parts = EventParts {
            vsn: env
                .vsn
                .ok_or_else(|| RegistryError::Envelope("no field \"vsn\"".into()))?,
            op: env
                .op
                .ok_or_else(|| RegistryError::Envelope("no field \"op\"".into()))?,
            schema: env.schema,
            table: env.table,
            key: AvroRow {
                layout: key_layout,
                bytes: key_body,
            },
            before: env.before.map(row),
            after: env.after.map(row),
            lsn_or_scn: env.lsn_or_scn,
            txid: env.txid,
            commit_ts_ms: env.commit_ts_ms,
        };
        parts
            .serialize(&mut serde_json::Serializer::new(out))
            .map_err(|e| RegistryError::Envelope(e.to_string()))
    }
}

/// The envelope's fields a line needs, borrowed from the record.
#[derive(Default)]
struct Envelope<'a> {
    vsn: Option<u64>,
    op: Option<&'static str>,
    before: Option<&'a [u8]>,
    after: Option<&'a [u8]>,
    schema: &'a str,
    table: &'a str,
    lsn_or_scn: &'a str,
    txid: Option<i64>,
    commit_ts_ms: i64,
}

impl<'a> Envelope<'a> {
    /// Reads `source`, keeping what the line shows. As the decoded event: a text field
    /// of another type reads as empty, `txid` as absent and `commit_ts_ms` as 0.
    fn source(&mut self, source: &RecordType, r: &mut Reader<'a>) -> Result<(), RegistryError> {
        for f in &source.fields {
            let value = scalar(&f.ty, r)?;
            match (f.name.as_str(), value) {
                ("schema", Scalar::Text(s)) => self.schema = s,
                ("table", Scalar::Text(s)) => self.table = s,
                ("lsn_or_scn", Scalar::Text(s)) => self.lsn_or_scn = s,
                ("txid", Scalar::Long(v)) => self.txid = Some(v),
                ("commit_ts_ms", Scalar::Long(v)) => self.commit_ts_ms = v,
                _ => {}
            }
        }
        Ok(())
    }
}

/// A `source` field's value, as far as the line needs it.
enum Scalar<'a> {
    Text(&'a str),
    Long(i64),
    Other,
}

/// Reads one value of `ty` (through its union branch), keeping strings and longs.
fn scalar<'a>(ty: &AvroType, r: &mut Reader<'a>) -> Result<Scalar<'a>, AvroError> {
    Ok(match ty {
        AvroType::Union(branches) => return scalar(avro::union_branch(branches, r)?, r),
        AvroType::String => Scalar::Text(
            std::str::from_utf8(r.bytes()?)
                .map_err(|_| AvroError::Malformed("string is not UTF-8".into()))?,
        ),
        AvroType::Long => Scalar::Long(r.long()?),
        other => {
            avro::skip(other, r)?;
            Scalar::Other
        }
    })
}

/// The bytes of a `before`/`after` row (`None` for its null branch).
fn row_bytes<'a>(
    ty: &AvroType,
    body: &'a [u8],
    r: &mut Reader<'a>,
) -> Result<Option<&'a [u8]>, RegistryError> {
    let branch = match ty {
        AvroType::Union(branches) => avro::union_branch(branches, r)?,
        other => other,
    };
    match branch {
        AvroType::Null => Ok(None),
        AvroType::Record(_) => {
            let start = body.len() - r.remaining();
            avro::skip(branch, r)?;
            Ok(Some(&body[start..body.len() - r.remaining()]))
        }
        _ => Err(RegistryError::Envelope("row is not a record".into())),
    }
}

/// A row's Avro bytes as a JSON object of its columns, in the record's order.
struct AvroRow<'a> {
    layout: &'a RecordType,
    bytes: &'a [u8],
}

impl Serialize for AvroRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = RefCell::new(Reader::new(self.bytes));
        let mut map = s.serialize_map(Some(self.layout.fields.len()))?;
        for f in &self.layout.fields {
            map.serialize_entry(f.column.as_str(), &AvroValue { ty: &f.ty, r: &r })?;
        }
        map.end()
    }
}

/// The next value of `ty` in `r`, written as JSON.
struct AvroValue<'r, 'a> {
    ty: &'r AvroType,
    r: &'r RefCell<Reader<'a>>,
}

impl Serialize for AvroValue<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut r = self.r.borrow_mut();
        let mut ty = self.ty;
        if let AvroType::Union(branches) = ty {
            ty = avro::union_branch(branches, &mut r).map_err(S::Error::custom)?;
        }
        let fail = |e: AvroError| S::Error::custom(e);
        match ty {
            // The one value that would otherwise be copied into a `String` first.
            AvroType::String => {
                let text = std::str::from_utf8(r.bytes().map_err(fail)?)
                    .map_err(|_| S::Error::custom("string is not UTF-8"))?;
                s.serialize_str(text)
            }
            // Anything else through its value (no allocation for booleans, numbers,
            // dates and times), written as the decoded path writes it.
            other => {
                let datum = avro::decode(other, &mut r).map_err(fail)?;
                DatumJson(&datum).serialize(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::catalog::{Column, Kind, TableSchema};
    use crate::codec::TableEncoder;
    use crate::envelope::{ChangeEvent, Op, SourceInfo};
    use crate::json::{EventJson, JsonEvent};
    use crate::position::Vsn;
    use crate::registry::RegistryClient;
    use crate::value::{Datum, Decimal};

    fn column(name: &str, kind: Kind, type_name: &str, nullable: bool) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            type_oid: 0,
            nullable,
            kind,
        }
    }

    /// A table with a column of every kind a line writes differently.
    fn table() -> TableSchema {
        TableSchema {
            schema: "pub\"lic".into(),
            name: "wide".into(),
            columns: vec![
                column("id", Kind::Int64, "bigint", false),
                column("k2", Kind::Text, "text", false),
                column("b", Kind::Bool, "boolean", true),
                column("i", Kind::Int32, "integer", true),
                column("s", Kind::Int16, "smallint", true),
                column("f", Kind::Float32, "real", true),
                column("d", Kind::Float64, "double precision", true),
                column(
                    "n",
                    Kind::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    "numeric(12,2)",
                    true,
                ),
                column("t", Kind::Text, "text", true),
                column("by", Kind::Bytes, "bytea", true),
                column("day", Kind::Date, "date", true),
                column("tm", Kind::Time, "time without time zone", true),
                column("ts", Kind::Timestamp, "timestamp without time zone", true),
                column("tz", Kind::TimestampTz, "timestamp with time zone", true),
                column("arr", Kind::Array(Box::new(Kind::Text)), "text[]", true),
                column("j", Kind::Text, "jsonb", true),
                column("u", Kind::Uuid, "uuid", true),
            ],
            primary_key: vec![0, 1],
            replica_identity: 'f',
        }
    }

    fn row(id: i64, text: &str) -> Vec<Datum> {
        vec![
            Datum::Long(id),
            Datum::String(format!("k\"{id}")),
            Datum::Bool(id % 2 == 0),
            Datum::Int(-7),
            Datum::Int(300),
            Datum::Float(0.1),
            Datum::Double(f64::NAN),
            Datum::Decimal(Decimal {
                unscaled: vec![0xfc, 0x18],
                scale: 2,
            }),
            Datum::String(text.into()),
            Datum::Bytes(vec![0, 0xff]),
            Datum::Date(-800_000),
            Datum::Time(3_723_500_000),
            Datum::Timestamp(1_000_000),
            Datum::TimestampTz(-1),
            Datum::Array(vec![
                Datum::String("a".into()),
                Datum::Null,
                Datum::String("c".into()),
            ]),
            Datum::String("{\"a\": [1, 2]}".into()),
            Datum::String("0e8b3f4c-3b7a-4f6e-9d7c-2a1b0c9d8e7f".into()),
        ]
    }

    fn nulls(id: i64) -> Vec<Datum> {
        let mut v = vec![Datum::Long(id), Datum::String(format!("k\"{id}"))];
        v.resize(table().columns.len(), Datum::Null);
        v
    }

    /// An encoder of [`table`] and a decoder, on a registry of the test's own.
    async fn codecs() -> (TableEncoder, EventDecoder) {
        let url = ferry_testkit::serve_registry(None).await.unwrap();
        let registry = RegistryClient::new(&url, None).unwrap();
        let encoder = TableEncoder::new(
            &registry,
            table(),
            "ferry.t.source.public.wide".into(),
            0,
            1,
            "src".into(),
        )
        .await
        .unwrap();
        (encoder, EventDecoder::new(registry))
    }

    #[tokio::test]
    async fn a_line_written_from_the_bytes_is_the_line_of_the_decoded_event() {
        let (encoder, decoder) = codecs().await;
        let cases = [
            (Op::Read, None, Some(row(1, "snap")), None),
            (Op::Create, None, Some(nulls(2)), Some(17)),
            (
                Op::Update,
                Some(row(3, "\"quoted\" \\ é \u{1}")),
                Some(row(3, "")),
                Some(i64::MAX),
            ),
            (Op::Delete, Some(nulls(4)), None, Some(-1)),
        ];
        for (i, (op, before, after, txid)) in cases.into_iter().enumerate() {
            let key_of = |r: &Vec<Datum>| vec![r[0].clone(), r[1].clone()];
            let key = after.as_ref().or(before.as_ref()).map(key_of).unwrap();
            let event = ChangeEvent {
                key,
                before,
                after,
                op,
                ts_ms: 5,
                vsn: Vsn(42 + i as u64),
                source: SourceInfo {
                    db: "db".into(),
                    schema: "pub\"lic".into(),
                    table: "wide".into(),
                    snapshot: op == Op::Read,
                    lsn_or_scn: "0/1A2B3C".into(),
                    txid,
                    commit_ts_ms: 1_735_787_045_123,
                },
            };
            let (key, value) = encoder.encode_event(&event).unwrap();
            let mut straight = Vec::new();
            decoder
                .write_json_line(&key, &value, &mut straight)
                .await
                .unwrap();
            let decoded = decoder.decode_event(&value).await.unwrap();
            let (key_type, key_datum) = decoder.decode_datum(&key).await.unwrap();
            let (AvroType::Record(layout), Datum::Record(key)) = (key_type.as_ref(), key_datum)
            else {
                panic!("the key is not a record");
            };
            let built = serde_json::to_string(&EventJson {
                event: &decoded,
                key_layout: layout,
                key: &key,
            })
            .unwrap();
            assert_eq!(String::from_utf8(straight).unwrap(), built, "{op:?}");
            // And it reads back as the event it was written from.
            let back: JsonEvent = serde_json::from_str(&built).unwrap();
            assert_eq!(back, JsonEvent::from_decoded(&decoded, layout, &key));
        }
    }

    #[tokio::test]
    async fn bad_bytes_are_an_error_not_a_panic() {
        let (encoder, decoder) = codecs().await;
        let event = ChangeEvent {
            key: vec![Datum::Long(1), Datum::String("k".into())],
            before: None,
            after: Some(row(1, "x")),
            op: Op::Create,
            ts_ms: 5,
            vsn: Vsn(1),
            source: SourceInfo {
                db: "db".into(),
                schema: "public".into(),
                table: "wide".into(),
                snapshot: false,
                lsn_or_scn: "0/1".into(),
                txid: None,
                commit_ts_ms: 1,
            },
        };
        let (key, value) = encoder.encode_event(&event).unwrap();
        for cut in [6, value.len() / 2, value.len() - 1] {
            let mut out = Vec::new();
            assert!(decoder
                .write_json_line(&key, &value[..cut], &mut out)
                .await
                .is_err());
        }
        let mut out = Vec::new();
        assert!(decoder
            .write_json_line(&key[..key.len() - 1], &value, &mut out)
            .await
            .is_err());
    }
}
