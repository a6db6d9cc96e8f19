//! What Ferry knows of a table: its columns, their PostgreSQL types and how each travels
//! ([`Kind`]), read from the catalog of the source (or of any PostgreSQL destination).
//!
//! Every column type is classified before any data moves. Types with a standard Avro
//! form get it; every other type travels as its exact PostgreSQL text form and is cast
//! back on the destination. Only types whose values can't mean the same thing on another
//! database (object identifiers such as `regclass`) are refused, with one error per column
//! naming `schema.table.column` and the type.

use std::collections::HashMap;
use std::fmt;

use tokio_postgres::Client;

/// How a column's values travel (the Avro branch they use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `boolean`.
    Bool,
    /// `smallint` (Avro `int`).
    Int16,
    /// `integer` (Avro `int`).
    Int32,
    /// `bigint` (Avro `long`).
    Int64,
    /// `real` (Avro `float`; NaN and ±Infinity included).
    Float32,
    /// `double precision` (Avro `double`).
    Float64,
    /// `numeric(p,s)` with 0 <= s <= p (Avro `decimal`; `NaN` in the string branch).
    Decimal {
        /// Total digits.
        precision: u32,
        /// Digits after the point.
        scale: u32,
    },
    /// Everything carried as a string: text types, unconstrained `numeric`, `json`,
    /// `jsonb`, `interval`, `timetz`, network and bit types, `money`, enums, ranges,
    /// composites, geometric and extension types — each in its exact text form.
    Text,
    /// `bytea` (Avro `bytes`).
    Bytes,
    /// `date` (Avro `date`; ±infinity in the string branch).
    Date,
    /// `time` (Avro `time-micros`).
    Time,
    /// `timestamp` (Avro `local-timestamp-micros`; ±infinity and out-of-range values in
    /// the string branch).
    Timestamp,
    /// `timestamptz` (Avro `timestamp-micros`, UTC).
    TimestampTz,
    /// `uuid` (Avro `string` with logical type `uuid`).
    Uuid,
    /// A one-dimensional array (Avro `array` of nullable elements; other shapes in the
    /// string branch).
    Array(Box<Kind>),
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name as in PostgreSQL.
    pub name: String,
    /// The type as PostgreSQL writes it (`format_type`), e.g. `numeric(10,2)`,
    /// `character varying(16)`, `public.mood`; used to cast text back on the destination.
    pub type_name: String,
    /// The type's OID on the server it was read from.
    pub type_oid: u32,
    /// False for `NOT NULL` columns.
    pub nullable: bool,
    /// How values travel.
    pub kind: Kind,
}

/// A table with the columns Ferry moves (generated columns are left to the destination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    /// PostgreSQL schema (namespace).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order (empty: no primary key).
    pub primary_key: Vec<usize>,
    /// `pg_class.relreplident`: `d` default, `f` full, `i` index, `n` nothing.
    pub replica_identity: char,
}

impl TableSchema {
    /// `schema.table` with identifiers quoted for SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The primary key columns, in key order.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.primary_key.iter().map(|&i| &self.columns[i])
    }
}

impl fmt::Display for TableSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A column whose type can't travel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {schema}.{table}.{column} has type {type_name}, which Ferry cannot move: {reason}")]
pub struct UnsupportedColumn {
    /// Schema of the table.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// The type as PostgreSQL writes it.
    pub type_name: String,
    /// Why, and what to do.
    pub reason: String,
    /// Whether the column is part of the primary key.
    pub in_primary_key: bool,
}

/// Why a catalog could not be read or a table can't be moved.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog query failed.
    #[error("reading the catalog of {what}")]
    Query {
        /// What was being read.
        what: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The table does not exist.
    #[error("table {0} does not exist")]
    NoSuchTable(String),
    /// Columns whose types can't travel, all of them at once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Unsupported(Vec<UnsupportedColumn>),
}

/// Quotes a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a PostgreSQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One row of `pg_type`, as much as classification needs.
#[derive(Clone, Debug)]
struct TypeInfo {
    name: String,
    typtype: u8,
    basetype: u32,
    typtypmod: i32,
    elem: u32,
    category: u8,
    delim: u8,
}

/// The types of one database, loaded once.
#[derive(Clone, Debug, Default)]
pub struct TypeCatalog {
    types: HashMap<u32, TypeInfo>,
}

// Built-in type OIDs (stable across PostgreSQL versions).
const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const DATE: u32 = 1082;
const TIME: u32 = 1083;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const UUID: u32 = 2950;

/// Object-identifier types: their values name objects of the source database.
const OBJECT_ID_TYPES: &[(u32, &str)] = &[
    (24, "regproc"),
    (2202, "regprocedure"),
    (2203, "regoper"),
    (2204, "regoperator"),
    (2205, "regclass"),
    (2206, "regtype"),
    (4096, "regrole"),
    (4089, "regnamespace"),
    (4191, "regcollation"),
    (3734, "regconfig"),
    (3769, "regdictionary"),
];

impl TypeCatalog {
    /// Loads `pg_type` of the connected database.
    pub async fn load(client: &Client) -> Result<TypeCatalog, CatalogError> {
        let rows = client
            .query(
                "SELECT t.oid, format_type(t.oid, NULL), t.typtype, t.typbasetype, t.typtypmod, \
                        t.typelem, t.typcategory, t.typdelim \
                 FROM pg_type t",
                &[],
            )
            .await
            .map_err(|source| CatalogError::Query {
                what: "pg_type".into(),
                source,
            })?;
        let mut types = HashMap::with_capacity(rows.len());
        for row in rows {
            let oid: u32 = row.get(0);
            let typtype: i8 = row.get(2);
            let category: i8 = row.get(6);
            let delim: i8 = row.get(7);
            types.insert(
                oid,
                TypeInfo {
                    name: row.get(1),
                    typtype: typtype as u8,
                    basetype: row.get(3),
                    typtypmod: row.get(4),
                    elem: row.get(5),
                    category: category as u8,
                    delim: delim as u8,
                },
            );
        }
        Ok(TypeCatalog { types })
    }

    /// How a value of type `oid` with modifier `typmod` travels, or why it can't.
    pub fn kind(&self, oid: u32, typmod: i32) -> Result<Kind, String> {
        self.kind_at_depth(oid, typmod, 0)
    }

    fn kind_at_depth(&self, oid: u32, typmod: i32, depth: u32) -> Result<Kind, String> {
        if depth > 32 {
            return Err("its domain or array nesting is too deep to classify".into());
        }
        if let Some((_, name)) = OBJECT_ID_TYPES.iter().find(|(o, _)| *o == oid) {
            return Err(format!(
                "{name} values are object identifiers of the source database and mean nothing \
                 on another one; store the object's name as text instead, or exclude the table"
            ));
        }
        let Some(info) = self.types.get(&oid) else {
            return Err(format!("type {oid} is not in the catalog"));
        };
        match info.typtype {
            b'd' => {
                // A domain travels as its base type and is cast back to the domain.
                let base_mod = if info.typtypmod >= 0 {
                    info.typtypmod
                } else {
                    typmod
                };
                return self.kind_at_depth(info.basetype, base_mod, depth + 1);
            }
            b'p' => {
                return Err(format!(
                    "{} is a pseudo-type and has no stored values",
                    info.name
                ))
            }
            _ => {}
        }
        Ok(match oid {
            BOOL => Kind::Bool,
            INT2 => Kind::Int16,
            INT4 => Kind::Int32,
            INT8 => Kind::Int64,
            FLOAT4 => Kind::Float32,
            FLOAT8 => Kind::Float64,
            NUMERIC => numeric_kind(typmod),
            BYTEA => Kind::Bytes,
            DATE => Kind::Date,
            TIME => Kind::Time,
            TIMESTAMP => Kind::Timestamp,
            TIMESTAMPTZ => Kind::TimestampTz,
            UUID => Kind::Uuid,
            _ if info.category == b'A' && info.elem != 0 => {
                let element = self.kind_at_depth(info.elem, typmod, depth + 1)?;
                // Elements that are arrays themselves (arrays of array domains), and
                // element types with another delimiter (box uses ';'), travel as text.
                if matches!(element, Kind::Array(_)) || info.delim != b',' {
                    Kind::Text
                } else {
                    Kind::Array(Box::new(element))
                }
            }
            _ => Kind::Text,
        })
    }
}

/// numeric(p,s) packs p and s into typmod as ((p << 16) | s) + 4, s as 11-bit signed.
fn numeric_kind(typmod: i32) -> Kind {
    if typmod < 4 {
        return Kind::Text;
    }
    let packed = typmod - 4;
    let precision = (packed >> 16) & 0xFFFF;
    let raw_scale = packed & 0x7FF;
    let scale = if raw_scale & 0x400 != 0 {
        raw_scale - 0x800
    } else {
        raw_scale
    };
    // Avro decimals need 0 <= scale <= precision; PostgreSQL 15 also allows negative
    // scales and scales above the precision, which then travel as text.
    if precision >= 1 && scale >= 0 && scale <= precision {
        Kind::Decimal {
            precision: precision as u32,
            scale: scale as u32,
        }
    } else {
        Kind::Text
    }
}

/// A table named by schema and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema.
    pub schema: String,
    /// Table.
    pub name: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Lists ordinary and partitioned tables (not partitions) in `schemas`.
pub async fn list_tables(
    client: &Client,
    schemas: &[String],
) -> Result<Vec<TableName>, CatalogError> {
    let rows = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname = ANY($1) \
             ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .map_err(|source| CatalogError::Query {
            what: "the list of tables".into(),
            source,
        })?;
    Ok(rows
        .into_iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}

/// Reads one table's columns and primary key. Columns whose type can't travel are
/// reported all together as [`CatalogError::Unsupported`].
pub async fn load_table(
    client: &Client,
    types: &TypeCatalog,
    table: &TableName,
) -> Result<TableSchema, CatalogError> {
    let (schema, unsupported) = inspect_table(client, types, table).await?;
    if unsupported.is_empty() {
        Ok(schema)
    } else {
        Err(CatalogError::Unsupported(unsupported))
    }
}

/// Reads one table like [`load_table`], but returns the columns whose type can't travel
/// beside the table (which then lacks them) instead of failing, so that a preflight can
/// report them together with the table's other problems.
pub async fn inspect_table(
    client: &Client,
    types: &TypeCatalog,
    table: &TableName,
) -> Result<(TableSchema, Vec<UnsupportedColumn>), CatalogError> {
    let query_err = |source| CatalogError::Query {
        what: format!("table {table}"),
        source,
    };
    let rel = client
        .query_opt(
            "SELECT c.oid, c.relreplident FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(query_err)?
        .ok_or_else(|| CatalogError::NoSuchTable(table.to_string()))?;
    let oid: u32 = rel.get(0);
    let replident: i8 = rel.get(1);
    let rows = client
        .query(
            "SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), \
                    NOT a.attnotnull, \
                    (SELECT array_position(i.indkey::int2[], a.attnum) FROM pg_index i \
                      WHERE i.indrelid = a.attrelid AND i.indisprimary) \
             FROM pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(query_err)?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut key: Vec<(i32, usize)> = Vec::new();
    let mut unsupported = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        let type_oid: u32 = row.get(1);
        let typmod: i32 = row.get(2);
        let type_name: String = row.get(3);
        let nullable: bool = row.get(4);
        let key_pos: Option<i32> = row.get(5);
        match types.kind(type_oid, typmod) {
            Ok(kind) => {
                if let Some(pos) = key_pos {
                    key.push((pos, columns.len()));
                }
                columns.push(Column {
                    name,
                    type_name,
                    type_oid,
                    nullable,
                    kind,
                });
            }
            Err(reason) => unsupported.push(UnsupportedColumn {
                schema: table.schema.clone(),
                table: table.name.clone(),
                column: name,
                type_name,
                reason,
                in_primary_key: key_pos.is_some(),
            }),
        }
    }
    key.sort();
    let schema = TableSchema {
        schema: table.schema.clone(),
        name: table.name.clone(),
        columns,
        primary_key: key.into_iter().map(|(_, i)| i).collect(),
        replica_identity: replident as u8 as char,
    };
    Ok((schema, unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods_decode() {
        assert_eq!(numeric_kind(-1), Kind::Text);
        assert_eq!(
            numeric_kind(((10 << 16) | 2) + 4),
            Kind::Decimal {
                precision: 10,
                scale: 2
            }
        );
        // numeric(3,-2) and numeric(2,5) are legal in PostgreSQL 15 but not Avro decimals.
        assert_eq!(numeric_kind(((3 << 16) | (0x800 - 2)) + 4), Kind::Text);
        assert_eq!(numeric_kind(((2 << 16) | 5) + 4), Kind::Text);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
