//! Change events as readable JSON lines, for audit (`ferry replay --to-file`) and for the
//! archive files of `ferry archive changes`.
//!
//! One event is one JSON object:
//!
//! ```json
//! {"vsn":42,"op":"u","table":"public.orders",
//!  "key":{"id":7},"before":{"id":7,"total":"10.50"},"after":{"id":7,"total":"12.00"},
//!  "source":{"lsn_or_scn":"0/1A2B3C","txid":731},"commit_ts":"2025-01-02T03:04:05.123Z"}
//! ```
//!
//! Columns appear in the writer schema's order (key: key order). Values: NULL is `null`;
//! booleans and integers are JSON booleans and numbers; `real`/`double` are numbers, or
//! the strings `NaN`, `Infinity`, `-Infinity`; `numeric` is a string with the exact
//! digits; `bytea` is PostgreSQL's hex form (`\x0aff`); `date`, `time`, `timestamp`
//! and `timestamptz` are ISO 8601 (`2025-01-02`, `03:04:05.5`, `2025-01-02T03:04:05`,
//! `2025-01-02T03:04:05Z`), except dates before year 1, which keep PostgreSQL's form
//! (`0044-03-15 BC`); one-dimensional arrays are JSON arrays; every other type is its
//! PostgreSQL text form as a string (json, interval, inet, ...).
//!
//! Archive files add the event's Kafka coordinates (`topic`, `partition`, `offset`).
//! [`JsonEvent`] reads a line back into the same value it was written from.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::avro::RecordType;
use crate::envelope::DecodedEvent;
use crate::value::{format_text, write_text, Datum};

/// Column name → value, in column order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row(pub Vec<(String, Value)>);

impl Row {
    /// The values of `datums` named by the columns of `layout` (fields beyond the layout
    /// are named by position, which never happens for a decoded record).
    pub fn from_datums(layout: &RecordType, datums: &[Datum]) -> Row {
        Row(datums
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let name = layout
                    .fields
                    .get(i)
                    .map_or_else(|| format!("#{i}"), |f| f.column.clone());
                (name, datum_to_json(d))
            })
            .collect())
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of column values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Row(out))
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

/// Where an event came from in the source database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonSource {
    /// LSN (PostgreSQL) or SCN (Oracle) of the change.
    pub lsn_or_scn: String,
    /// Source transaction id, when known.
    pub txid: Option<i64>,
}

/// One change event as a JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonEvent {
    /// Its place in the stream.
    pub vsn: u64,
    /// `r` (snapshot row), `c`, `u` or `d`.
    pub op: String,
    /// `schema.table`.
    pub table: String,
    /// Primary-key columns.
    pub key: Row,
    /// The row before (updates and deletes).
    pub before: Option<Row>,
    /// The row after (snapshot rows, inserts, updates).
    pub after: Option<Row>,
    /// Source position.
    pub source: JsonSource,
    /// Commit time of the source transaction, ISO 8601 UTC.
    pub commit_ts: String,
    /// Kafka topic (archive files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Kafka partition (archive files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Kafka offset (archive files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

impl JsonEvent {
    /// The JSON form of a decoded event and its key (`key_layout` names the key values).
    pub fn from_decoded(event: &DecodedEvent, key_layout: &RecordType, key: &[Datum]) -> Self {
        JsonEvent {
            vsn: event.vsn.0,
            op: event.op.code().to_owned(),
            table: format!("{}.{}", event.source.schema, event.source.table),
            key: Row::from_datums(key_layout, key),
            before: event
                .before
                .as_ref()
                .map(|r| Row::from_datums(&event.row_type, r)),
            after: event
                .after
                .as_ref()
                .map(|r| Row::from_datums(&event.row_type, r)),
            source: JsonSource {
                lsn_or_scn: event.source.lsn_or_scn.clone(),
                txid: event.source.txid,
            },
            commit_ts: iso_timestamp_ms(event.source.commit_ts_ms),
            topic: None,
            partition: None,
            offset: None,
        }
    }

    /// The same event without its Kafka coordinates.
    #[must_use]
    pub fn without_coordinates(mut self) -> Self {
        self.topic = None;
        self.partition = None;
        self.offset = None;
        self
    }

    /// One line of JSON (no newline).
    pub fn to_line(&self) -> String {
        // Serializing plain strings, numbers and maps cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A decoded event as its JSON line, written straight from the decoded values: the same
/// bytes as [`JsonEvent::from_decoded`] serialized (tested), without copying every column
/// name and building a [`Value`] per column first. `ferry replay --to-file` writes the
/// same line from the record's bytes ([`crate::codec::EventDecoder::write_json_line`]).
pub struct EventJson<'a> {
    /// The event.
    pub event: &'a DecodedEvent,
    /// Names the key values.
    pub key_layout: &'a RecordType,
    /// The key's values.
    pub key: &'a [Datum],
}

impl Serialize for EventJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        let row = |datums| RowJson {
            layout: &e.row_type,
            datums,
        };
        EventParts {
            vsn: e.vsn.0,
            op: e.op.code(),
            schema: &e.source.schema,
            table: &e.source.table,
            key: RowJson {
                layout: self.key_layout,
                datums: self.key,
            },
            before: e.before.as_deref().map(row),
            after: e.after.as_deref().map(row),
            lsn_or_scn: &e.source.lsn_or_scn,
            txid: e.source.txid,
            commit_ts_ms: e.source.commit_ts_ms,
        }
        .serialize(s)
    }
}

/// An event's line from its parts, whatever writes its rows ([`EventJson`] from decoded
/// values, [`crate::codec::EventDecoder::write_json_line`] from the Avro bytes): the one
/// place that says what the line holds, in which order.
pub(crate) struct EventParts<'a, K, R> {
    pub vsn: u64,
    pub op: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    pub key: K,
    pub before: Option<R>,
    pub after: Option<R>,
    pub lsn_or_scn: &'a str,
    pub txid: Option<i64>,
    pub commit_ts_ms: i64,
}

impl<K: Serialize, R: Serialize> Serialize for EventParts<'_, K, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(8))?;
        map.serialize_entry("vsn", &self.vsn)?;
        map.serialize_entry("op", self.op)?;
        map.serialize_entry("table", &Dotted(self.schema, self.table))?;
        map.serialize_entry("key", &self.key)?;
        map.serialize_entry("before", &self.before)?;
        map.serialize_entry("after", &self.after)?;
        map.serialize_entry(
            "source",
            &JsonSourceRef {
                lsn_or_scn: self.lsn_or_scn,
                txid: self.txid,
            },
        )?;
        map.serialize_entry(
            "commit_ts",
            &IsoJson(Datum::TimestampTz(self.commit_ts_ms.saturating_mul(1000))),
        )?;
        map.end()
    }
}

/// `schema.table` as one JSON string.
struct Dotted<'a>(&'a str, &'a str);

impl Serialize for Dotted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}.{}", self.0, self.1))
    }
}

/// [`JsonSource`], borrowed.
#[derive(Serialize)]
struct JsonSourceRef<'a> {
    lsn_or_scn: &'a str,
    txid: Option<i64>,
}

/// A row as [`Row::from_datums`] names and serializes it.
struct RowJson<'a> {
    layout: &'a RecordType,
    datums: &'a [Datum],
}

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.datums.len()))?;
        for (i, d) in self.datums.iter().enumerate() {
            match self.layout.fields.get(i) {
                Some(f) => map.serialize_entry(f.column.as_str(), &DatumJson(d))?,
                None => map.serialize_entry(&format!("#{i}"), &DatumJson(d))?,
            }
        }
        map.end()
    }
}

/// A value as [`datum_to_json`] makes it, serialized without building the [`Value`].
pub(crate) struct DatumJson<'a>(pub &'a Datum);

impl Serialize for DatumJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let datum = self.0;
        match datum {
            Datum::Null => s.serialize_unit(),
            Datum::Bool(b) => s.serialize_bool(*b),
            Datum::Int(v) => s.serialize_i64(i64::from(*v)),
            Datum::Long(v) => s.serialize_i64(*v),
            Datum::Float(_) | Datum::Double(_) => datum_to_json(datum).serialize(s),
            Datum::Array(items) | Datum::Record(items) => {
                s.collect_seq(items.iter().map(DatumJson))
            }
            Datum::Date(_) | Datum::Time(_) | Datum::Timestamp(_) | Datum::TimestampTz(_) => {
                serialize_iso(datum, s)
            }
            Datum::String(text) => s.serialize_str(text),
            Datum::Bytes(_) | Datum::Decimal(_) => {
                s.serialize_str(&format_text(datum).unwrap_or_default())
            }
        }
    }
}

/// Milliseconds since the epoch as ISO 8601 UTC (`2025-01-02T03:04:05.123Z`).
pub fn iso_timestamp_ms(ms: i64) -> String {
    iso(&Datum::TimestampTz(ms.saturating_mul(1000)))
}

/// A value as readable JSON (see the module doc).
pub fn datum_to_json(datum: &Datum) -> Value {
    match datum {
        Datum::Null => Value::Null,
        Datum::Bool(b) => Value::Bool(*b),
        Datum::Int(v) => Value::from(*v),
        Datum::Long(v) => Value::from(*v),
        // The shortest text that reads back as the same f32, as a JSON number.
        Datum::Float(v) => float(v.to_string().parse().unwrap_or(f64::NAN), datum),
        Datum::Double(v) => float(*v, datum),
        Datum::Array(items) => Value::Array(items.iter().map(datum_to_json).collect()),
        Datum::Record(fields) => Value::Array(fields.iter().map(datum_to_json).collect()),
        Datum::Date(_) | Datum::Time(_) | Datum::Timestamp(_) | Datum::TimestampTz(_) => {
            Value::String(iso(datum))
        }
        Datum::Bytes(_) | Datum::String(_) | Datum::Decimal(_) => {
            Value::String(format_text(datum).unwrap_or_default())
        }
    }
}

fn float(v: f64, datum: &Datum) -> Value {
    match serde_json::Number::from_f64(v) {
        Some(n) if v.is_finite() => Value::Number(n),
        _ => Value::String(format_text(datum).unwrap_or_default()),
    }
}

/// PostgreSQL's ISO text form (`YYYY-MM-DD HH:MM:SS[.f]+00`) as ISO 8601; BC values keep
/// PostgreSQL's form, which ISO 8601 readers would misread.
fn iso(datum: &Datum) -> String {
    let mut text = String::with_capacity(ISO_CAPACITY);
    write_iso(datum, &mut text);
    text
}

/// Room for the longest ISO form a date or time value takes.
const ISO_CAPACITY: usize = 48;

/// Appends [`iso`]'s text to `out`.
fn write_iso(datum: &Datum, out: &mut String) {
    let start = out.len();
    write_text(datum, out);
    if out.ends_with(" BC") {
        return;
    }
    if let Some(i) = out[start..].find(' ') {
        out.replace_range(start + i..=start + i, "T");
    }
    if out.ends_with("+00") {
        out.truncate(out.len() - 3);
        out.push('Z');
    }
}

/// Serializes [`iso`]'s text of `datum` as a string without allocating one per value: a
/// replay writes one or more for every event.
fn serialize_iso<S: Serializer>(datum: &Datum, s: S) -> Result<S::Ok, S::Error> {
    thread_local! {
        static TEXT: std::cell::RefCell<String> =
            std::cell::RefCell::new(String::with_capacity(ISO_CAPACITY));
    }
    TEXT.with(|text| match text.try_borrow_mut() {
        Ok(mut text) => {
            text.clear();
            write_iso(datum, &mut text);
            s.serialize_str(&text)
        }
        // Never nested, but a serializer is free to call anything.
        Err(_) => s.serialize_str(&iso(datum)),
    })
}

/// A date or time value written as [`iso`] writes it.
struct IsoJson(Datum);

impl Serialize for IsoJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_iso(&self.0, s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::value::Decimal;

    #[test]
    fn values_are_readable_and_exact() {
        let cases = [
            (Datum::Null, "null"),
            (Datum::Bool(true), "true"),
            (Datum::Int(-7), "-7"),
            (Datum::Long(i64::MAX), "9223372036854775807"),
            (Datum::Float(0.1), "0.1"),
            (Datum::Double(-2.5e300), "-2.5e+300"),
            (Datum::Double(f64::NAN), "\"NaN\""),
            (Datum::Float(f32::NEG_INFINITY), "\"-Infinity\""),
            (Datum::Bytes(vec![0, 0xff]), "\"\\\\x00ff\""),
            (
                Datum::Decimal(Decimal {
                    unscaled: vec![0xfc, 0x18],
                    scale: 2,
                }),
                "\"-10.00\"",
            ),
            (Datum::Date(0), "\"1970-01-01\""),
            (Datum::Time(3_723_500_000), "\"01:02:03.500000\""),
            (Datum::Timestamp(1_000_000), "\"1970-01-01T00:00:01\""),
            (Datum::TimestampTz(-1), "\"1969-12-31T23:59:59.999999Z\""),
            (Datum::Array(vec![Datum::Int(1), Datum::Null]), "[1,null]"),
            (Datum::String("{\"a\": 1}".into()), "\"{\\\"a\\\": 1}\""),
        ];
        for (datum, json) in cases {
            assert_eq!(datum_to_json(&datum).to_string(), json, "{datum:?}");
        }
        assert_eq!(iso_timestamp_ms(1_500), "1970-01-01T00:00:01.500000Z");
        assert!(datum_to_json(&Datum::Date(-800_000))
            .as_str()
            .unwrap()
            .ends_with(" BC"));
    }

    #[test]
    fn an_event_line_reads_back_equal_with_columns_in_order() {
        let event = JsonEvent {
            vsn: 9,
            op: "u".into(),
            table: "public.t".into(),
            key: Row(vec![("z".into(), Value::from(1))]),
            before: None,
            after: Some(Row(vec![
                ("z".into(), Value::from(1)),
                ("a".into(), Value::Null),
            ])),
            source: JsonSource {
                lsn_or_scn: "0/1".into(),
                txid: Some(3),
            },
            commit_ts: iso_timestamp_ms(0),
            topic: Some("t".into()),
            partition: Some(0),
            offset: Some(4),
        };
        let line = event.to_line();
        assert!(line.contains(r#""after":{"z":1,"a":null}"#), "{line}");
        let back: JsonEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, event);
        let plain = event.clone().without_coordinates().to_line();
        assert!(!plain.contains("offset"));
    }

    #[test]
    fn an_event_written_straight_is_the_same_line_as_its_json_event() {
        use crate::avro::{AvroType, FieldType};
        use crate::envelope::{Op, SourceInfo};
        use crate::position::Vsn;
        use std::sync::Arc;

        let field = |name: &str| FieldType {
            name: name.into(),
            column: format!("{name} col"),
            pg_type: None,
            ty: AvroType::Null,
        };
        let row_type = Arc::new(RecordType {
            name: "r".into(),
            fields: [
                "id", "f", "d", "nan", "by", "num", "day", "bc", "t", "ts", "tz", "arr", "s",
            ]
            .into_iter()
            .map(field)
            .collect(),
        });
        let values = vec![
            Datum::Long(-7),
            Datum::Float(0.1),
            Datum::Double(-2.5e300),
            Datum::Double(f64::NAN),
            Datum::Bytes(vec![0, 0xff]),
            Datum::Decimal(Decimal {
                unscaled: vec![0xfc, 0x18],
                scale: 2,
            }),
            Datum::Date(0),
            Datum::Date(-800_000),
            Datum::Time(3_723_500_000),
            Datum::Timestamp(1_000_000),
            Datum::TimestampTz(-1),
            Datum::Array(vec![Datum::Int(1), Datum::Null, Datum::Bool(false)]),
            Datum::String("\"quoted\" \\ é \u{1}".into()),
            // Beyond the layout: named by position.
            Datum::Record(vec![Datum::Int(2)]),
        ];
        let key_layout = RecordType {
            name: "k".into(),
            fields: vec![field("id")],
        };
        for (op, before, after, txid) in [
            (Op::Read, None, Some(values.clone()), None),
            (
                Op::Update,
                Some(values.clone()),
                Some(values.clone()),
                Some(731),
            ),
            (Op::Delete, Some(values.clone()), None, Some(-1)),
        ] {
            let event = DecodedEvent {
                row_type: row_type.clone(),
                before,
                after,
                op,
                ts_ms: 5,
                vsn: Vsn(42),
                source: SourceInfo {
                    db: "db".into(),
                    schema: "sch\"ema".into(),
                    table: "t".into(),
                    snapshot: false,
                    lsn_or_scn: "0/1A2B3C".into(),
                    txid,
                    commit_ts_ms: 1_735_787_045_123,
                },
            };
            let key = [Datum::Long(-7)];
            let built = JsonEvent::from_decoded(&event, &key_layout, &key).to_line();
            let straight = serde_json::to_string(&EventJson {
                event: &event,
                key_layout: &key_layout,
                key: &key,
            })
            .unwrap();
            assert_eq!(straight, built);
        }
    }
}
