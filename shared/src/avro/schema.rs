//! The schema model ([`AvroType`] and its records), schema generation from table
//! schemas, and schema parsing.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value as Json};

use super::AvroError;
use crate::catalog::{Column, Kind, TableSchema};

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
