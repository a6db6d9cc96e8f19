//! Avro schemas for table rows and change envelopes, and the binary codec for them.
//!
//! Schema generation: one key record (primary-key columns) and one value record (the
//! Debezium-shaped envelope of DESIGN.md §3) per table. Each column field is a union:
//! `null` first when the column is nullable (with default null), then the typed branch
//! for the column's [`Kind`], then a `string` branch where the typed branch can't hold
//! every value (numeric NaN, ±infinity, out-of-range timestamps, odd array shapes).
//! Fields carry `pg.name` (the exact column name; Avro names are restricted) and
//! `pg.type` (the PostgreSQL type, `format_type`).
//!
//! Codec: [`AvroType`] is parsed from any schema JSON of that shape (including schemas
//! fetched from a registry by id); [`encode`] and [`decode`] write and read the standard
//! Avro binary encoding, so any Avro reader gets the same values. Decoding never panics
//! on bad bytes.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value as Json};

use crate::catalog::{Column, Kind, TableSchema};
use crate::value::{Datum, Decimal};

/// Why a schema can't be used or bytes can't be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroError {
    /// The schema JSON is not one Ferry can read.
    #[error("unsupported Avro schema: {0}")]
    Schema(String),
    /// Bytes ended early or hold an impossible value.
    #[error("malformed Avro data: {0}")]
    Malformed(String),
    /// A value does not fit the schema.
    #[error("value does not fit the schema: {0}")]
    Mismatch(String),
}

/// The shape of an Avro value, as far as Ferry's records need.
#[derive(Clone, Debug, PartialEq)]
pub enum AvroType {
    /// `null`.
    Null,
    /// `boolean`.
    Boolean,
    /// `int`.
    Int,
    /// `long`.
    Long,
    /// `float`.
    Float,
    /// `double`.
    Double,
    /// `bytes`.
    Bytes,
    /// `string` (also `uuid`).
    String,
    /// `bytes` with logical type `decimal`.
    Decimal {
        /// Total digits.
        precision: u32,
        /// Digits after the point.
        scale: u32,
    },
    /// `int` with logical type `date`.
    Date,
    /// `long` with logical type `time-micros`.
    TimeMicros,
    /// `long` with logical type `local-timestamp-micros`.
    LocalTimestampMicros,
    /// `long` with logical type `timestamp-micros`.
    TimestampMicros,
    /// `array`.
    Array(Box<AvroType>),
    /// A union of branches.
    Union(Vec<AvroType>),
    /// A record.
    Record(Arc<RecordType>),
}

/// A record type.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordType {
    /// Full name (namespace.name).
    pub name: String,
    /// Fields in order.
    pub fields: Vec<FieldType>,
}

/// A field of a record.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldType {
    /// Avro field name.
    pub name: String,
    /// The PostgreSQL column name (`pg.name`), or the Avro name if absent.
    pub column: String,
    /// The PostgreSQL type (`pg.type`), when the schema was made by Ferry.
    pub pg_type: Option<String>,
    /// The field's type.
    pub ty: AvroType,
}

impl RecordType {
    /// Index of the field with Avro name `name`.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

/// A valid Avro name from a PostgreSQL identifier: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn avro_name(ident: &str) -> String {
    let mut out: String = ident
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    out
}

/// Distinct Avro field names for columns (a suffix resolves collisions after sanitizing).
fn field_names(columns: &[&Column]) -> Vec<String> {
    let mut used: HashMap<String, usize> = HashMap::new();
    columns
        .iter()
        .map(|c| {
            let base = avro_name(&c.name);
            let mut name = base.clone();
            let mut n = 1;
            while used.contains_key(&name) {
                n += 1;
                name = format!("{base}_{n}");
            }
            used.insert(name.clone(), 1);
            name
        })
        .collect()
}

/// The typed branch of a kind, and whether a `string` branch follows it.
fn kind_branches(kind: &Kind) -> (Json, bool) {
    match kind {
        Kind::Bool => (json!("boolean"), false),
        Kind::Int16 | Kind::Int32 => (json!("int"), false),
        Kind::Int64 => (json!("long"), false),
        Kind::Float32 => (json!("float"), false),
        Kind::Float64 => (json!("double"), false),
        Kind::Decimal { precision, scale } => (
            json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}),
            true,
        ),
        Kind::Text => (json!("string"), false),
        Kind::Bytes => (json!("bytes"), false),
        Kind::Date => (json!({"type": "int", "logicalType": "date"}), true),
        Kind::Time => (json!({"type": "long", "logicalType": "time-micros"}), false),
        Kind::Timestamp => (
            json!({"type": "long", "logicalType": "local-timestamp-micros"}),
            true,
        ),
        Kind::TimestampTz => (
            json!({"type": "long", "logicalType": "timestamp-micros"}),
            true,
        ),
        Kind::Uuid => (json!({"type": "string", "logicalType": "uuid"}), false),
        Kind::Array(element) => {
            let (typed, with_string) = kind_branches(element);
            let mut items = vec![json!("null"), typed];
            if with_string {
                items.push(json!("string"));
            }
            (json!({"type": "array", "items": items}), true)
        }
    }
}

/// How a kind travels, in words (for reports): the Avro branch and whether special values
/// ride in a string branch.
pub fn describe_kind(kind: &Kind) -> String {
    let (typed, with_string) = kind_branches(kind);
    let typed = match &typed {
        Json::String(s) => s.clone(),
        Json::Object(o) => match (o.get("logicalType"), o.get("type")) {
            (Some(Json::String(l)), _) => l.clone(),
            (_, Some(Json::String(t))) if t == "array" => match kind {
                Kind::Array(element) => format!("array of {}", describe_kind(element)),
                _ => t.clone(),
            },
            (_, Some(Json::String(t))) => t.clone(),
            _ => typed.to_string(),
        },
        other => other.to_string(),
    };
    if with_string {
        format!("{typed} (special values as text)")
    } else if matches!(kind, Kind::Text) {
        "string (exact text form)".to_owned()
    } else {
        typed
    }
}

/// The Avro type JSON of a column: a union of null (if nullable), typed, string (if needed).
fn column_type(column: &Column) -> Json {
    let (typed, with_string) = kind_branches(&column.kind);
    let mut branches = Vec::new();
    if column.nullable {
        branches.push(json!("null"));
    }
    branches.push(typed);
    if with_string {
        branches.push(json!("string"));
    }
    if branches.len() == 1 {
        branches.remove(0)
    } else {
        Json::Array(branches)
    }
}

fn row_record(name: &str, namespace: &str, table: &TableSchema, columns: &[&Column]) -> Json {
    let names = field_names(columns);
    let fields: Vec<Json> = columns
        .iter()
        .zip(names)
        .map(|(c, name)| {
            let mut f = Map::new();
            f.insert("name".into(), json!(name));
            f.insert("type".into(), column_type(c));
            if c.nullable {
                f.insert("default".into(), Json::Null);
            }
            f.insert("pg.name".into(), json!(c.name));
            f.insert("pg.type".into(), json!(c.type_name));
            Json::Object(f)
        })
        .collect();
    json!({
        "type": "record",
        "name": name,
        "namespace": namespace,
        "pg.schema": table.schema,
        "pg.table": table.name,
        "fields": fields,
    })
}

/// The namespace of a table's records: `ferry.<schema>.<table>`, sanitized.
pub fn table_namespace(table: &TableSchema) -> String {
    format!(
        "ferry.{}.{}",
        avro_name(&table.schema),
        avro_name(&table.name)
    )
}

/// The key schema: the primary-key columns (never null).
pub fn key_schema(table: &TableSchema) -> Json {
    let columns: Vec<&Column> = table.key_columns().collect();
    row_record("Key", &table_namespace(table), table, &columns)
}

/// The value schema: the change envelope of DESIGN.md §3.
pub fn value_schema(table: &TableSchema) -> Json {
    let ns = table_namespace(table);
    let columns: Vec<&Column> = table.columns.iter().collect();
    let row = row_record("Value", &ns, table, &columns);
    json!({
        "type": "record",
        "name": "Envelope",
        "namespace": ns,
        "fields": [
            // First, so that a record's VSN is read at a fixed place without its schema
            // (codec::framed_vsn); readers find every field by name.
            {"name": "vsn", "type": "long"},
            {"name": "before", "type": ["null", row], "default": null},
            {"name": "after", "type": ["null", "Value"], "default": null},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {"name": "source", "type": {
                "type": "record", "name": "Source", "namespace": "ferry",
                "fields": [
                    {"name": "db", "type": "string"},
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "snapshot", "type": "boolean"},
                    {"name": "lsn_or_scn", "type": "string"},
                    {"name": "txid", "type": ["null", "long"], "default": null},
                    {"name": "commit_ts_ms", "type": "long"}
                ]
            }}
        ]
    })
}

/// Parses a schema JSON text into an [`AvroType`].
pub fn parse_schema(text: &str) -> Result<AvroType, AvroError> {
    let json: Json =
        serde_json::from_str(text).map_err(|e| AvroError::Schema(format!("not JSON: {e}")))?;
    let mut names = HashMap::new();
    parse_type(&json, "", &mut names)
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn parse_type(
    json: &Json,
    namespace: &str,
    names: &mut HashMap<String, AvroType>,
) -> Result<AvroType, AvroError> {
    match json {
        Json::String(name) => primitive(name)
            .or_else(|| names.get(&full_name(name, namespace)).cloned())
            .or_else(|| names.get(name.as_str()).cloned())
            .ok_or_else(|| AvroError::Schema(format!("unknown type {name:?}"))),
        Json::Array(branches) => Ok(AvroType::Union(
            branches
                .iter()
                .map(|b| parse_type(b, namespace, names))
                .collect::<Result<_, _>>()?,
        )),
        Json::Object(obj) => {
            let ty = obj
                .get("type")
                .ok_or_else(|| AvroError::Schema("a type object without \"type\"".into()))?;
            let logical = obj.get("logicalType").and_then(Json::as_str);
            match (ty.as_str(), logical) {
                (Some("bytes"), Some("decimal")) => {
                    let number = |key: &str| obj.get(key).and_then(Json::as_u64).map(|v| v as u32);
                    Ok(AvroType::Decimal {
                        precision: number("precision")
                            .ok_or_else(|| AvroError::Schema("decimal without precision".into()))?,
                        scale: number("scale").unwrap_or(0),
                    })
                }
                (Some("int"), Some("date")) => Ok(AvroType::Date),
                (Some("long"), Some("time-micros")) => Ok(AvroType::TimeMicros),
                (Some("long"), Some("local-timestamp-micros")) => {
                    Ok(AvroType::LocalTimestampMicros)
                }
                (Some("long"), Some("timestamp-micros")) => Ok(AvroType::TimestampMicros),
                (Some("array"), _) => {
                    let items = obj
                        .get("items")
                        .ok_or_else(|| AvroError::Schema("array without items".into()))?;
                    Ok(AvroType::Array(Box::new(parse_type(
                        items, namespace, names,
                    )?)))
                }
                (Some("record"), _) => {
                    let name = obj
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| AvroError::Schema("record without name".into()))?;
                    let ns = obj
                        .get("namespace")
                        .and_then(Json::as_str)
                        .unwrap_or(namespace);
                    let full = full_name(name, ns);
                    let inner_ns = full.rsplit_once('.').map(|(n, _)| n).unwrap_or("");
                    let mut fields = Vec::new();
                    for f in obj
                        .get("fields")
                        .and_then(Json::as_array)
                        .ok_or_else(|| AvroError::Schema(format!("record {full} without fields")))?
                    {
                        let fname = f
                            .get("name")
                            .and_then(Json::as_str)
                            .ok_or_else(|| AvroError::Schema("field without name".into()))?;
                        let fty = f.get("type").ok_or_else(|| {
                            AvroError::Schema(format!("field {fname} without type"))
                        })?;
                        fields.push(FieldType {
                            name: fname.to_owned(),
                            column: f
                                .get("pg.name")
                                .and_then(Json::as_str)
                                .unwrap_or(fname)
                                .to_owned(),
                            pg_type: f.get("pg.type").and_then(Json::as_str).map(str::to_owned),
                            ty: parse_type(fty, inner_ns, names)?,
                        });
                    }
                    let record = AvroType::Record(Arc::new(RecordType {
                        name: full.clone(),
                        fields,
                    }));
                    names.insert(full, record.clone());
                    Ok(record)
                }
                // Unknown logical types are read as their underlying type (Avro spec).
                (Some(base), _) => primitive(base).ok_or_else(|| {
                    AvroError::Schema(format!("type {base:?} is not used by Ferry's records"))
                }),
                (None, _) => parse_type(ty, namespace, names),
            }
        }
        other => Err(AvroError::Schema(format!("unexpected {other}"))),
    }
}

fn primitive(name: &str) -> Option<AvroType> {
    Some(match name {
        "null" => AvroType::Null,
        "boolean" => AvroType::Boolean,
        "int" => AvroType::Int,
        "long" => AvroType::Long,
        "float" => AvroType::Float,
        "double" => AvroType::Double,
        "bytes" => AvroType::Bytes,
        "string" => AvroType::String,
        _ => return None,
    })
}

// ---- encoding ----

/// Appends an Avro `long` (zigzag varint).
pub fn write_long(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7F) | 0x80);
        z >>= 7;
    }
}

/// Appends Avro `bytes` or `string`: the length, then the bytes.
pub fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    write_long(b.len() as i64, out);
    out.extend_from_slice(b);
}

/// Does `datum` go in a branch of type `ty` (without conversion)?
fn fits(ty: &AvroType, datum: &Datum) -> bool {
    matches!(
        (ty, datum),
        (AvroType::Null, Datum::Null)
            | (AvroType::Boolean, Datum::Bool(_))
            | (AvroType::Int, Datum::Int(_))
            | (AvroType::Long, Datum::Long(_))
            | (AvroType::Float, Datum::Float(_))
            | (AvroType::Double, Datum::Double(_))
            | (AvroType::Bytes, Datum::Bytes(_))
            | (AvroType::String, Datum::String(_))
            | (AvroType::Decimal { .. }, Datum::Decimal(_))
            | (AvroType::Date, Datum::Date(_))
            | (AvroType::TimeMicros, Datum::Time(_))
            | (AvroType::LocalTimestampMicros, Datum::Timestamp(_))
            | (AvroType::TimestampMicros, Datum::TimestampTz(_))
            | (AvroType::Array(_), Datum::Array(_))
            | (AvroType::Record(_), Datum::Record(_))
    )
}

fn describe(datum: &Datum) -> &'static str {
    match datum {
        Datum::Null => "null",
        Datum::Bool(_) => "boolean",
        Datum::Int(_) => "int",
        Datum::Long(_) => "long",
        Datum::Float(_) => "float",
        Datum::Double(_) => "double",
        Datum::Bytes(_) => "bytes",
        Datum::String(_) => "string",
        Datum::Decimal(_) => "decimal",
        Datum::Date(_) => "date",
        Datum::Time(_) => "time",
        Datum::Timestamp(_) => "timestamp",
        Datum::TimestampTz(_) => "timestamptz",
        Datum::Array(_) => "array",
        Datum::Record(_) => "record",
    }
}

/// Appends the Avro binary encoding of `datum` as `ty`.
pub fn encode(ty: &AvroType, datum: &Datum, out: &mut Vec<u8>) -> Result<(), AvroError> {
    match (ty, datum) {
        (AvroType::Union(branches), _) => {
            let index = branches
                .iter()
                .position(|b| fits(b, datum))
                .ok_or_else(|| {
                    AvroError::Mismatch(format!("no union branch holds a {}", describe(datum)))
                })?;
            write_long(index as i64, out);
            encode(&branches[index], datum, out)
        }
        (AvroType::Null, Datum::Null) => Ok(()),
        (AvroType::Boolean, Datum::Bool(b)) => {
            out.push(u8::from(*b));
            Ok(())
        }
        (AvroType::Int, Datum::Int(v)) | (AvroType::Date, Datum::Date(v)) => {
            write_long(i64::from(*v), out);
            Ok(())
        }
        (AvroType::Long, Datum::Long(v))
        | (AvroType::TimeMicros, Datum::Time(v))
        | (AvroType::LocalTimestampMicros, Datum::Timestamp(v))
        | (AvroType::TimestampMicros, Datum::TimestampTz(v)) => {
            write_long(*v, out);
            Ok(())
        }
        (AvroType::Float, Datum::Float(v)) => {
            out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
        (AvroType::Double, Datum::Double(v)) => {
            out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
        (AvroType::Bytes, Datum::Bytes(b)) => {
            write_bytes(b, out);
            Ok(())
        }
        (AvroType::String, Datum::String(s)) => {
            write_bytes(s.as_bytes(), out);
            Ok(())
        }
        (AvroType::Decimal { scale, .. }, Datum::Decimal(d)) => {
            if d.scale != *scale {
                return Err(AvroError::Mismatch(format!(
                    "decimal of scale {} in a field of scale {scale}",
                    d.scale
                )));
            }
            write_bytes(&d.unscaled, out);
            Ok(())
        }
        (AvroType::Array(item), Datum::Array(items)) => {
            if !items.is_empty() {
                write_long(items.len() as i64, out);
                for it in items {
                    encode(item, it, out)?;
                }
            }
            write_long(0, out);
            Ok(())
        }
        (AvroType::Record(record), Datum::Record(values)) => encode_fields(record, values, out),
        (ty, datum) => Err(AvroError::Mismatch(format!(
            "a {} where the schema has {ty:?}",
            describe(datum)
        ))),
    }
}

/// Encodes `values` as a record of type `record`, field by field (what [`encode`] does
/// with a [`Datum::Record`], without building one).
pub fn encode_fields(
    record: &RecordType,
    values: &[Datum],
    out: &mut Vec<u8>,
) -> Result<(), AvroError> {
    if record.fields.len() != values.len() {
        return Err(AvroError::Mismatch(format!(
            "record {} has {} fields, the value {}",
            record.name,
            record.fields.len(),
            values.len()
        )));
    }
    for (field, value) in record.fields.iter().zip(values) {
        encode_field(field, value, out)?;
    }
    Ok(())
}

/// Encodes one field's value, naming the field in a mismatch.
pub fn encode_field(field: &FieldType, value: &Datum, out: &mut Vec<u8>) -> Result<(), AvroError> {
    encode(&field.ty, value, out).map_err(|e| match e {
        AvroError::Mismatch(m) => AvroError::Mismatch(format!("field {}: {m}", field.name)),
        other => other,
    })
}

/// Encodes a row that may be absent into `ty`, a union of null and a record (or the
/// record itself when `row` is present): the envelope's `before` and `after`.
pub fn encode_optional_row(
    ty: &AvroType,
    row: Option<&[Datum]>,
    out: &mut Vec<u8>,
) -> Result<(), AvroError> {
    match (ty, row) {
        (AvroType::Union(branches), None) => {
            let index = branches
                .iter()
                .position(|b| matches!(b, AvroType::Null))
                .ok_or_else(|| AvroError::Mismatch("no null branch for an absent row".into()))?;
            write_long(index as i64, out);
            Ok(())
        }
        (AvroType::Union(branches), Some(values)) => {
            let (index, record) = branches
                .iter()
                .enumerate()
                .find_map(|(i, b)| match b {
                    AvroType::Record(r) => Some((i, r)),
                    _ => None,
                })
                .ok_or_else(|| AvroError::Mismatch("no record branch for a row".into()))?;
            write_long(index as i64, out);
            encode_fields(record, values, out)
        }
        (AvroType::Record(record), Some(values)) => encode_fields(record, values, out),
        (AvroType::Null, None) => Ok(()),
        (ty, _) => Err(AvroError::Mismatch(format!(
            "a row where the schema has {ty:?}"
        ))),
    }
}

// ---- decoding ----

/// Reads Avro binary data from a byte slice, advancing it.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], AvroError> {
        if self.buf.len() < n {
            return Err(AvroError::Malformed(format!(
                "needed {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads a `long` (zigzag varint).
    pub fn long(&mut self) -> Result<i64, AvroError> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(AvroError::Malformed("varint longer than 10 bytes".into()))
    }

    fn int(&mut self) -> Result<i32, AvroError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| AvroError::Malformed(format!("int out of range: {v}")))
    }

    /// Reads a length-prefixed `bytes` or `string`, borrowed from the buffer.
    pub fn bytes(&mut self) -> Result<&'a [u8], AvroError> {
        let len = self.long()?;
        let len = usize::try_from(len)
            .map_err(|_| AvroError::Malformed(format!("negative length {len}")))?;
        self.take(len)
    }
}

/// Reads a union's branch index and returns that branch.
fn union_branch<'t>(
    branches: &'t [AvroType],
    r: &mut Reader<'_>,
) -> Result<&'t AvroType, AvroError> {
    let index = r.long()?;
    usize::try_from(index)
        .ok()
        .and_then(|i| branches.get(i))
        .ok_or_else(|| AvroError::Malformed(format!("union branch {index}")))
}

/// Reads past one value of type `ty` without building it.
pub fn skip(ty: &AvroType, r: &mut Reader<'_>) -> Result<(), AvroError> {
    match ty {
        AvroType::Null => {}
        AvroType::Boolean => {
            r.take(1)?;
        }
        AvroType::Int
        | AvroType::Date
        | AvroType::Long
        | AvroType::TimeMicros
        | AvroType::LocalTimestampMicros
        | AvroType::TimestampMicros => {
            r.long()?;
        }
        AvroType::Float => {
            r.take(4)?;
        }
        AvroType::Double => {
            r.take(8)?;
        }
        AvroType::Bytes | AvroType::String | AvroType::Decimal { .. } => {
            r.bytes()?;
        }
        AvroType::Array(item) => loop {
            let count = r.long()?;
            if count == 0 {
                break;
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                let size = r.long()?;
                let size = usize::try_from(size)
                    .map_err(|_| AvroError::Malformed(format!("negative block size {size}")))?;
                r.take(size)?;
                continue;
            }
            if count as usize > r.remaining().max(1) * 8 + 1 {
                return Err(AvroError::Malformed(format!(
                    "array block of {count} items"
                )));
            }
            for _ in 0..count {
                skip(item, r)?;
            }
        },
        AvroType::Union(branches) => skip(union_branch(branches, r)?, r)?,
        AvroType::Record(record) => {
            for f in &record.fields {
                skip(&f.ty, r)?;
            }
        }
    }
    Ok(())
}

/// Reads one value of type `ty`.
pub fn decode(ty: &AvroType, r: &mut Reader<'_>) -> Result<Datum, AvroError> {
    Ok(match ty {
        AvroType::Null => Datum::Null,
        AvroType::Boolean => match r.take(1)?[0] {
            0 => Datum::Bool(false),
            1 => Datum::Bool(true),
            b => return Err(AvroError::Malformed(format!("boolean byte {b}"))),
        },
        AvroType::Int => Datum::Int(r.int()?),
        AvroType::Date => Datum::Date(r.int()?),
        AvroType::Long => Datum::Long(r.long()?),
        AvroType::TimeMicros => Datum::Time(r.long()?),
        AvroType::LocalTimestampMicros => Datum::Timestamp(r.long()?),
        AvroType::TimestampMicros => Datum::TimestampTz(r.long()?),
        AvroType::Float => {
            let b = r.take(4)?;
            Datum::Float(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        AvroType::Double => {
            let b = r.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Datum::Double(f64::from_le_bytes(a))
        }
        AvroType::Bytes => Datum::Bytes(r.bytes()?.to_vec()),
        AvroType::String => Datum::String(
            std::str::from_utf8(r.bytes()?)
                .map_err(|_| AvroError::Malformed("string is not UTF-8".into()))?
                .to_owned(),
        ),
        AvroType::Decimal { scale, .. } => Datum::Decimal(Decimal {
            unscaled: r.bytes()?.to_vec(),
            scale: *scale,
        }),
        AvroType::Array(item) => {
            let mut items = Vec::new();
            loop {
                let mut count = r.long()?;
                if count == 0 {
                    break;
                }
                if count < 0 {
                    // A negative count is followed by the block's size in bytes.
                    r.long()?;
                    count = -count;
                }
                if count as usize > r.remaining().max(1) * 8 + 1 {
                    return Err(AvroError::Malformed(format!(
                        "array block of {count} items"
                    )));
                }
                for _ in 0..count {
                    items.push(decode(item, r)?);
                }
            }
            Datum::Array(items)
        }
        AvroType::Union(branches) => decode(union_branch(branches, r)?, r)?,
        AvroType::Record(record) => Datum::Record(
            record
                .fields
                .iter()
                .map(|f| decode(&f.ty, r))
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableSchema {
        let col = |name: &str, kind: Kind, nullable: bool| Column {
            name: name.into(),
            type_name: format!("{kind:?}"),
            type_oid: 0,
            nullable,
            kind,
        };
        TableSchema {
            schema: "public".into(),
            name: "odd table".into(),
            columns: vec![
                col("id", Kind::Int64, false),
                col("1st col", Kind::Text, true),
                col(
                    "1st-col",
                    Kind::Decimal {
                        precision: 10,
                        scale: 2,
                    },
                    true,
                ),
                col("ts", Kind::TimestampTz, true),
                col("tags", Kind::Array(Box::new(Kind::Date)), true),
            ],
            primary_key: vec![0],
            replica_identity: 'f',
        }
    }

    #[test]
    fn generated_schemas_parse_with_apache_avro_and_ours() {
        let t = table();
        for schema in [key_schema(&t), value_schema(&t)] {
            let text = schema.to_string();
            apache_avro::Schema::parse_str(&text).unwrap();
            parse_schema(&text).unwrap();
        }
        let v = value_schema(&t);
        let fields = &v["fields"][1]["type"][1]["fields"];
        assert_eq!(fields[1]["name"], "_1st_col");
        assert_eq!(fields[2]["name"], "_1st_col_2");
        assert_eq!(fields[2]["pg.name"], "1st-col");
    }

    #[test]
    fn encoding_matches_apache_avro() {
        let t = table();
        let text = value_schema(&t).to_string();
        let ours = parse_schema(&text).unwrap();
        let row = Datum::Record(vec![
            Datum::Long(-5),
            Datum::String("ünï".into()),
            Datum::String("NaN".into()),
            Datum::TimestampTz(1_700_000_000_123_456),
            Datum::Array(vec![
                Datum::Date(-3),
                Datum::Null,
                Datum::String("infinity".into()),
            ]),
        ]);
        let envelope = Datum::Record(vec![
            Datum::Long(42),
            Datum::Null,
            row.clone(),
            Datum::String("c".into()),
            Datum::Long(1),
            Datum::Record(vec![
                Datum::String("db".into()),
                Datum::String("public".into()),
                Datum::String("odd table".into()),
                Datum::Bool(false),
                Datum::String("0/16".into()),
                Datum::Long(7),
                Datum::Long(1),
            ]),
        ]);
        let mut bytes = Vec::new();
        encode(&ours, &envelope, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        let ok = envelope.clone();
        // A value of the wrong shape is refused, naming the field.
        let mut wrong = envelope.clone();
        if let Datum::Record(f) = &mut wrong {
            f[3] = Datum::Long(1);
        }
        let err = encode(&ours, &wrong, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("field op"), "{err}");
        let back = decode(&ours, &mut Reader::new(&bytes)).unwrap();
        assert_eq!(back, ok);
        // Skipping reads exactly what decoding reads, and garbage fails cleanly.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        let mut r = Reader::new(&twice);
        skip(&ours, &mut r).unwrap();
        assert_eq!(r.remaining(), bytes.len());
        assert_eq!(decode(&ours, &mut r).unwrap(), ok);
        assert_eq!(r.remaining(), 0);
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(skip(&ours, &mut Reader::new(&bytes[..cut])).is_err());
        }
        // apache-avro reads our bytes with the same schema.
        let schema = apache_avro::Schema::parse_str(&text).unwrap();
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap();
        let value = reader.read_value(&mut &bytes[..]).unwrap();
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("not a record")
        };
        assert_eq!(fields[0].1, apache_avro::types::Value::Long(42));
    }

    #[test]
    fn decoding_garbage_fails_cleanly() {
        let t = table();
        let ty = parse_schema(&value_schema(&t).to_string()).unwrap();
        for bytes in [&[][..], &[0xff; 12][..], &[2, 0x80][..], &[3][..]] {
            assert!(decode(&ty, &mut Reader::new(bytes)).is_err());
        }
    }
}
