//! Decoding the Avro binary encoding: [`Reader`], [`skip`] and [`decode`].

use super::{AvroError, AvroType};
use crate::value::{Datum, Decimal};

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
pub(crate) fn union_branch<'t>(
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
