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

#[cfg(doc)]
use crate::catalog::Kind;

mod encode;
mod error;
mod reader;
mod schema;
#[cfg(test)]
mod tests;

pub use encode::{
    encode, encode_field, encode_fields, encode_optional_row, write_bytes, write_long,
};
pub use error::AvroError;
pub(crate) use reader::union_branch;
pub use reader::{decode, skip, Reader};
pub use schema::{
    avro_name, describe_kind, key_schema, parse_schema, table_namespace, value_schema, AvroType,
    FieldType, RecordType,
};
