//! Snapshot rows in COPY's binary format.
//!
//! A value goes in binary only when the result is the very value the text path
//! (`format_text`, then the column type's input function) would store. That holds when
//! the destination column's type is a built-in one listed in [`Encoding::of`] (its
//! receive function checks ranges and applies the typmod exactly as its input function
//! does) and the value has the matching shape: an `integer` column gets an Avro `int`,
//! a `timestamptz` column an Avro `timestamp-micros`, and so on. Text-like columns
//! (`text`, `varchar`, `char`, `json`, `jsonb`) take the text form of any value, which is
//! what their input function would read.
//!
//! Everything else makes the whole run go through text COPY instead: domains, enums,
//! ranges, `money`, extension types, arrays of other types or of more than one dimension,
//! and values riding in the Avro string branch of a typed column (numeric `NaN`,
//! `±infinity` dates and timestamps). [`encode_rows`] decides per run by trying: it
//! returns `None` at the first value it can't write.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_shared::value::{write_text, Datum};

/// COPY binary file header: signature, flags, header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
/// The range `date_recv` accepts (days since 2000-01-01), as `date_in` does.
const DATE_RANGE: std::ops::Range<i64> = -2_451_545..2_145_031_949;
/// The range `timestamp_recv` accepts (microseconds since 2000-01-01).
const TIMESTAMP_RANGE: std::ops::Range<i64> = -211_813_488_000_000_000..9_223_371_331_200_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A scalar type's binary form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// `text`, `varchar`, `bpchar`, `json`: the text's bytes.
    Text,
    /// Version 1, then the text.
    Jsonb,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
}

/// How one destination column's values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// A value of a built-in scalar type.
    Scalar(Scalar),
    /// A one-dimensional array of a built-in scalar type whose OID is given.
    Array(Scalar, u32),
}

impl Encoding {
    /// The binary form of values of the type `oid`, when Ferry writes that type in
    /// binary (built-in types only; a domain has its own OID and goes as text).
    pub(crate) fn of(oid: u32) -> Option<Encoding> {
        use Scalar::*;
        let scalar = |oid| {
            Some(match oid {
                16 => Bool,
                21 => Int2,
                23 => Int4,
                20 => Int8,
                700 => Float4,
                701 => Float8,
                1700 => Numeric,
                25 | 1043 | 1042 | 114 => Text,
                3802 => Jsonb,
                17 => Bytea,
                1082 => Date,
                1083 => Time,
                1114 => Timestamp,
                1184 => TimestampTz,
                2950 => Uuid,
                _ => return None,
            })
        };
        if let Some(s) = scalar(oid) {
            return Some(Encoding::Scalar(s));
        }
        let element = match oid {
            1000 => 16,
            1005 => 21,
            1007 => 23,
            1016 => 20,
            1021 => 700,
            1022 => 701,
            1231 => 1700,
            1009 => 25,
            1015 => 1043,
            1014 => 1042,
            199 => 114,
            3807 => 3802,
            1001 => 17,
            1182 => 1082,
            1183 => 1083,
            1115 => 1114,
            1185 => 1184,
            2951 => 2950,
            _ => return None,
        };
        scalar(element).map(|s| Encoding::Array(s, element))
    }
}

/// The COPY binary payload (header, rows, trailer) of `rows`, each with one value per
/// entry of `encodings`; `None` when some value can't be written exactly in binary.
pub(crate) fn encode_rows<'a>(
    encodings: &[Encoding],
    rows: impl Iterator<Item = &'a [Datum]>,
    size_hint: usize,
) -> Option<Bytes> {
    let fields = i16::try_from(encodings.len()).ok()?;
    let mut out = BytesMut::with_capacity(HEADER.len() + size_hint * (2 + 16 * encodings.len()));
    out.put_slice(HEADER);
    for row in rows {
        if row.len() != encodings.len() {
            return None;
        }
        out.put_i16(fields);
        for (enc, datum) in encodings.iter().zip(row) {
            write_field(*enc, datum, &mut out)?;
        }
    }
    out.put_i16(-1);
    Some(out.freeze())
}

/// Writes a length-prefixed field (or -1 for NULL).
fn write_field(enc: Encoding, datum: &Datum, out: &mut BytesMut) -> Option<()> {
    if *datum == Datum::Null {
        out.put_i32(-1);
        return Some(());
    }
    let at = out.len();
    out.put_i32(0);
    match enc {
        Encoding::Scalar(s) => write_scalar(s, datum, out)?,
        Encoding::Array(s, element) => write_array(s, element, datum, out)?,
    }
    let len = i32::try_from(out.len() - at - 4).ok()?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Some(())
}

fn write_array(s: Scalar, element: u32, datum: &Datum, out: &mut BytesMut) -> Option<()> {
    let Datum::Array(items) = datum else {
        return None; // other shapes travel as text (explicit bounds, several dimensions)
    };
    if items.is_empty() {
        out.put_i32(0); // no dimensions: '{}'
        out.put_i32(0);
        out.put_u32(element);
        return Some(());
    }
    out.put_i32(1);
    out.put_i32(i32::from(items.contains(&Datum::Null)));
    out.put_u32(element);
    out.put_i32(i32::try_from(items.len()).ok()?);
    out.put_i32(1); // lower bound
    for item in items {
        if matches!(item, Datum::Array(_) | Datum::Record(_)) {
            return None;
        }
        write_field(Encoding::Scalar(s), item, out)?;
    }
    Some(())
}

fn write_scalar(s: Scalar, datum: &Datum, out: &mut BytesMut) -> Option<()> {
    match (s, datum) {
        (Scalar::Bool, Datum::Bool(b)) => out.put_u8(u8::from(*b)),
        (Scalar::Int2, Datum::Int(v)) => out.put_i16(i16::try_from(*v).ok()?),
        (Scalar::Int4, Datum::Int(v)) => out.put_i32(*v),
        (Scalar::Int8, Datum::Long(v)) => out.put_i64(*v),
        (Scalar::Float4, Datum::Float(v)) => out.put_u32(v.to_bits()),
        (Scalar::Float8, Datum::Double(v)) => out.put_u64(v.to_bits()),
        (Scalar::Numeric, Datum::Decimal(d)) => write_numeric(&d.to_string(), out)?,
        (Scalar::Numeric, Datum::String(text)) => write_numeric(text, out)?,
        (Scalar::Text, d) if !matches!(d, Datum::Record(_)) => write_text_bytes(d, out),
        (Scalar::Jsonb, d) if !matches!(d, Datum::Record(_)) => {
            out.put_u8(1);
            write_text_bytes(d, out);
        }
        (Scalar::Bytea, Datum::Bytes(b)) => out.put_slice(b),
        (Scalar::Date, Datum::Date(days)) => {
            let pg = i64::from(*days) - i64::from(PG_EPOCH_DAYS);
            if !DATE_RANGE.contains(&pg) {
                return None;
            }
            out.put_i32(i32::try_from(pg).ok()?);
        }
        (Scalar::Time, Datum::Time(micros)) => {
            if !(0..=MICROS_PER_DAY).contains(micros) {
                return None;
            }
            out.put_i64(*micros);
        }
        (Scalar::Timestamp, Datum::Timestamp(micros))
        | (Scalar::TimestampTz, Datum::TimestampTz(micros)) => {
            let pg = micros.checked_sub(PG_EPOCH_MICROS)?;
            if !TIMESTAMP_RANGE.contains(&pg) {
                return None;
            }
            out.put_i64(pg);
        }
        (Scalar::Uuid, Datum::String(text)) => write_uuid(text, out)?,
        _ => return None,
    }
    Some(())
}

/// The text form, which the column type's input function would read.
fn write_text_bytes(datum: &Datum, out: &mut BytesMut) {
    if let Datum::String(s) = datum {
        out.put_slice(s.as_bytes());
    } else {
        let mut text = String::new();
        write_text(datum, &mut text);
        out.put_slice(text.as_bytes());
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (PostgreSQL's output form, either case).
fn write_uuid(text: &str, out: &mut BytesMut) -> Option<()> {
    let b = text.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    for pair in hex.chunks(2) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out.put_u8((hi * 16 + lo) as u8);
    }
    Some(())
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
/// Largest display scale the binary form carries (`NUMERIC_DSCALE_MASK`).
const NUMERIC_MAX_DSCALE: usize = 0x3FFF;

/// A plain decimal text (`-12.340`: what `numeric_out` prints for finite values) in
/// numeric's binary form: base-10000 digits, weight, sign, display scale. `None` for
/// anything else (`NaN`, `Infinity`, exponents), which then goes as text.
fn write_numeric(text: &str, out: &mut BytesMut) -> Option<()> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty()
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || (body.contains('.') && frac.is_empty())
        || frac.len() > NUMERIC_MAX_DSCALE
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    // Base-10000 digits aligned on the decimal point: the integer part padded on the
    // left, the fraction on the right, to whole groups of four decimal digits.
    let int_groups = int.len().div_ceil(4);
    let frac_groups = frac.len().div_ceil(4);
    let mut digits: Vec<i16> = Vec::with_capacity(int_groups + frac_groups);
    let lead = int_groups * 4 - int.len();
    let mut group = 0i16;
    let mut n = 0;
    for c in std::iter::repeat_n(b'0', lead)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', frac_groups * 4 - frac.len()))
    {
        group = group * 10 + i16::from(c - b'0');
        n += 1;
        if n == 4 {
            digits.push(group);
            group = 0;
            n = 0;
        }
    }
    let mut weight = i64::try_from(int_groups).ok()? - 1;
    let leading = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..leading);
    weight -= i64::try_from(leading).ok()?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let (weight, sign) = if digits.is_empty() {
        (0, NUMERIC_POS) // zero is never negative
    } else {
        (
            i16::try_from(weight).ok()?,
            if negative { NUMERIC_NEG } else { NUMERIC_POS },
        )
    };
    out.put_u16(u16::try_from(digits.len()).ok()?);
    out.put_i16(weight);
    out.put_u16(sign);
    out.put_u16(u16::try_from(frac.len()).ok()?);
    for d in digits {
        out.put_i16(d);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(text: &str) -> Option<Vec<i16>> {
        let mut out = BytesMut::new();
        write_numeric(text, &mut out)?;
        Some(
            out.chunks(2)
                .map(|c| i16::from_be_bytes([c[0], c[1]]))
                .collect(),
        )
    }

    #[test]
    fn numerics_are_base_10000_digits_around_the_point() {
        // ndigits, weight, sign, dscale, digits...
        assert_eq!(numeric("0"), Some(vec![0, 0, 0, 0]));
        assert_eq!(numeric("0.00"), Some(vec![0, 0, 0, 2]));
        assert_eq!(numeric("-0.00"), Some(vec![0, 0, 0, 2]));
        assert_eq!(numeric("1"), Some(vec![1, 0, 0, 0, 1]));
        assert_eq!(numeric("10000"), Some(vec![1, 1, 0, 0, 1]));
        assert_eq!(numeric("-123.4500"), Some(vec![2, 0, 0x4000, 4, 123, 4500]));
        assert_eq!(numeric("0.001"), Some(vec![1, -1, 0, 3, 10]));
        assert_eq!(numeric("0.00001"), Some(vec![1, -2, 0, 5, 1000]));
        assert_eq!(
            numeric("12345678.9"),
            Some(vec![3, 1, 0, 1, 1234, 5678, 9000])
        );
        for special in [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e5",
            "",
            "-",
            ".5",
            "5.",
            "1.2.3",
        ] {
            assert_eq!(numeric(special), None, "{special}");
        }
    }

    #[test]
    fn only_built_in_types_and_their_arrays_have_an_encoding() {
        assert_eq!(Encoding::of(20), Some(Encoding::Scalar(Scalar::Int8)));
        assert_eq!(Encoding::of(1043), Some(Encoding::Scalar(Scalar::Text)));
        assert_eq!(
            Encoding::of(1185),
            Some(Encoding::Array(Scalar::TimestampTz, 1184))
        );
        for other in [
            790,  /* money */
            3904, /* int4range */
            1186, /* interval */
            99_999,
        ] {
            assert_eq!(Encoding::of(other), None);
        }
    }

    #[test]
    fn values_of_another_shape_or_out_of_range_are_refused() {
        let enc = |oid| vec![Encoding::of(oid).unwrap()];
        let one = |oid, d: Datum| encode_rows(&enc(oid), std::iter::once(&[d][..]), 1);
        assert!(one(21, Datum::Int(70_000)).is_none());
        assert!(one(23, Datum::Long(1)).is_none());
        assert!(one(701, Datum::Float(1.1)).is_none());
        assert!(one(1114, Datum::String("infinity".into())).is_none());
        assert!(one(1184, Datum::Timestamp(0)).is_none());
        assert!(one(1082, Datum::String("-infinity".into())).is_none());
        assert!(one(1700, Datum::String("NaN".into())).is_none());
        assert!(one(
            2950,
            Datum::String("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}".into())
        )
        .is_none());
        assert!(one(1007, Datum::String("{{1,2},{3,4}}".into())).is_none());
        assert!(one(1007, Datum::Array(vec![Datum::Long(1)])).is_none());
        assert!(one(25, Datum::Long(5)).is_some());
        assert!(one(1007, Datum::Array(vec![Datum::Int(1), Datum::Null])).is_some());
        assert!(one(23, Datum::Null).is_some());
    }
}
