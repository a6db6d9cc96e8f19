//! Encoding values to the Avro binary encoding.

use super::{AvroError, AvroType, FieldType, RecordType};
use crate::value::Datum;

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
