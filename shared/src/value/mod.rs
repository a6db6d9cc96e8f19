//! Column values in flight ([`Datum`]) and their PostgreSQL text form.
//!
//! Values leave the source in PostgreSQL's text output form (COPY text and pgoutput both
//! use the type's output function) and enter the destination through the type's input
//! function (`$1::text::<type>`). In between they travel as Avro. [`parse_text`] turns the
//! text into the typed value for the column's [`Kind`], and [`format_text`] gives back a
//! text that the destination's input function reads as the same value.
//!
//! Exactness rests on the session settings in [`SESSION_SETTINGS`], applied to every
//! connection that reads or writes row values (including the replication connection):
//! ISO dates, UTC, shortest exact floats, hex bytea, C monetary locale.
//!
//! Values a typed Avro branch cannot hold (numeric `NaN`, date and timestamp `±infinity`,
//! timestamps beyond the range of 64-bit microseconds since 1970, multi-dimensional arrays
//! or arrays with explicit bounds) stay as [`Datum::String`] with their exact text; the
//! Avro schema has a `string` branch for them.

use std::fmt::Write as _;

use crate::catalog::Kind;

mod datetime;
mod decimal;

pub use datetime::write_pg_timestamp;
use datetime::*;
pub use decimal::{decimal_from_base10000, parse_decimal, Decimal};

/// Settings that make text forms exact and identical on every server. Applied with one
/// `SET` per setting at connection start (see [`session_settings_sql`]), or as startup
/// options on the replication connection ([`session_settings_options`]).
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
    ("client_encoding", "UTF8"),
];

/// `SET ...;` statements for [`SESSION_SETTINGS`], to run with `batch_execute`.
pub fn session_settings_sql() -> String {
    let mut sql = String::new();
    for (name, value) in SESSION_SETTINGS {
        let _ = write!(sql, "SET {name} = '{value}';");
    }
    sql
}

/// [`SESSION_SETTINGS`] as a libpq `options` string (`-c name=value ...`).
pub fn session_settings_options() -> String {
    SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {}={}", name, value.replace(' ', "\\ ")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One value, shaped like the Avro branch it travels in.
#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// `boolean`.
    Bool(bool),
    /// Avro `int`: `smallint`, `integer`.
    Int(i32),
    /// Avro `long`: `bigint`.
    Long(i64),
    /// Avro `float`: `real`.
    Float(f32),
    /// Avro `double`: `double precision`.
    Double(f64),
    /// Avro `bytes`: `bytea`.
    Bytes(Vec<u8>),
    /// Avro `string`: text types, text forms of other types, and special values.
    String(String),
    /// Avro `decimal`: `numeric(p,s)`.
    Decimal(Decimal),
    /// Avro `date`: days since 1970-01-01 (proleptic Gregorian).
    Date(i32),
    /// Avro `time-micros`: microseconds after midnight (up to 24:00:00).
    Time(i64),
    /// Avro `local-timestamp-micros`: `timestamp` as microseconds since 1970-01-01 00:00.
    Timestamp(i64),
    /// Avro `timestamp-micros`: `timestamptz` as microseconds since 1970-01-01 00:00 UTC.
    TimestampTz(i64),
    /// Avro `array`: a one-dimensional array with lower bound 1.
    Array(Vec<Datum>),
    /// Avro `record`: fields in schema order.
    Record(Vec<Datum>),
}

/// A text that is not a valid value of its column's type (never expected from PostgreSQL's
/// own output; a sign of wrong session settings or a decoder bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {text:?} as {what}")]
pub struct ValueError {
    /// The offending text (row values are not logged; callers decide whether to show it).
    pub text: String,
    /// What it was read as.
    pub what: &'static str,
}

fn bad(text: &str, what: &'static str) -> ValueError {
    ValueError {
        text: text.to_owned(),
        what,
    }
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Reads PostgreSQL's text output of a value of `kind` (with [`SESSION_SETTINGS`]).
pub fn parse_text(kind: &Kind, text: &str) -> Result<Datum, ValueError> {
    Ok(match kind {
        Kind::Bool => match text {
            "t" | "true" => Datum::Bool(true),
            "f" | "false" => Datum::Bool(false),
            _ => return Err(bad(text, "boolean")),
        },
        Kind::Int16 | Kind::Int32 => Datum::Int(text.parse().map_err(|_| bad(text, "integer"))?),
        Kind::Int64 => Datum::Long(text.parse().map_err(|_| bad(text, "bigint"))?),
        Kind::Float32 => Datum::Float(parse_float(text)? as f32),
        Kind::Float64 => Datum::Double(parse_float(text)?),
        Kind::Decimal { scale, .. } => match parse_decimal(text, *scale) {
            Some(d) => Datum::Decimal(d),
            None if is_numeric_special(text) => Datum::String(text.to_owned()),
            None => return Err(bad(text, "numeric")),
        },
        Kind::Text => Datum::String(text.to_owned()),
        Kind::Bytes => Datum::Bytes(parse_bytea(text)?),
        Kind::Date => match parse_date(text) {
            Some(days) => Datum::Date(days),
            None if is_infinity(text) => Datum::String(text.to_owned()),
            None => return Err(bad(text, "date")),
        },
        Kind::Time => Datum::Time(parse_time(text).ok_or_else(|| bad(text, "time"))?),
        Kind::Timestamp => match parse_timestamp(text, false) {
            Some(Ok(micros)) => Datum::Timestamp(micros),
            Some(Err(OutOfRange)) => Datum::String(text.to_owned()),
            None if is_infinity(text) => Datum::String(text.to_owned()),
            None => return Err(bad(text, "timestamp")),
        },
        Kind::TimestampTz => match parse_timestamp(text, true) {
            Some(Ok(micros)) => Datum::TimestampTz(micros),
            Some(Err(OutOfRange)) => Datum::String(text.to_owned()),
            None if is_infinity(text) => Datum::String(text.to_owned()),
            None => return Err(bad(text, "timestamptz")),
        },
        Kind::Uuid => Datum::String(text.to_owned()),
        Kind::Array(element) => match parse_array(text)? {
            Some(items) => Datum::Array(
                items
                    .into_iter()
                    .map(|item| match item {
                        None => Ok(Datum::Null),
                        Some(t) => parse_text(element, &t),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            None => Datum::String(text.to_owned()),
        },
    })
}

/// The text a PostgreSQL input function reads back as the same value; `None` for NULL.
pub fn format_text(datum: &Datum) -> Option<String> {
    let mut out = String::new();
    if write_text(datum, &mut out) {
        Some(out)
    } else {
        None
    }
}

/// Appends the text form of `datum` to `out`; false (and nothing appended) for NULL.
pub fn write_text(datum: &Datum, out: &mut String) -> bool {
    match datum {
        Datum::Null => return false,
        Datum::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Datum::Int(v) => {
            let _ = write!(out, "{v}");
        }
        Datum::Long(v) => {
            let _ = write!(out, "{v}");
        }
        Datum::Float(v) => write_float(f64::from(*v), Some(*v), out),
        Datum::Double(v) => write_float(*v, None, out),
        Datum::Bytes(b) => {
            out.push_str("\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
        }
        Datum::String(s) => out.push_str(s),
        Datum::Decimal(d) => out.push_str(&d.to_string()),
        Datum::Date(days) => write_date(i64::from(*days), out),
        Datum::Time(micros) => write_time(*micros, out),
        Datum::Timestamp(micros) => write_timestamp(*micros, false, out),
        Datum::TimestampTz(micros) => write_timestamp(*micros, true, out),
        Datum::Array(items) => {
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let mut element = String::new();
                if write_text(item, &mut element) {
                    out.push('"');
                    for c in element.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                } else {
                    out.push_str("NULL");
                }
            }
            out.push('}');
        }
        Datum::Record(fields) => {
            // Records are not column values; show them as a PostgreSQL row literal.
            out.push('(');
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(t) = format_text(f) {
                    let _ = write!(out, "\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\""));
                }
            }
            out.push(')');
        }
    }
    true
}

fn is_infinity(text: &str) -> bool {
    text == "infinity" || text == "-infinity"
}

fn is_numeric_special(text: &str) -> bool {
    matches!(text, "NaN" | "Infinity" | "-Infinity")
}

fn parse_float(text: &str) -> Result<f64, ValueError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => text.parse().map_err(|_| bad(text, "floating-point number")),
    }
}

fn write_float(v: f64, single: Option<f32>, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("Infinity");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Infinity");
    } else if let Some(f) = single {
        // Shortest text that reads back as the same f32 (PostgreSQL's float4in is exact).
        let _ = write!(out, "{f:e}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

fn parse_bytea(text: &str) -> Result<Vec<u8>, ValueError> {
    let hex = text
        .strip_prefix("\\x")
        .ok_or_else(|| bad(text, "bytea in hex form"))?;
    if hex.len() % 2 != 0 {
        return Err(bad(text, "bytea in hex form"));
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(bad(text, "bytea in hex form")),
            }
        })
        .collect()
}

/// Reads a one-dimensional array literal with default bounds (`{a,"b c",NULL}`) into its
/// elements' texts. `Ok(None)` for the shapes an Avro array can't hold exactly
/// (explicit bounds `[0:1]={...}`, nested braces): those travel as text.
fn parse_array(text: &str) -> Result<Option<Vec<Option<String>>>, ValueError> {
    if text.starts_with('[') {
        return Ok(None);
    }
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| bad(text, "array"))?;
    if inner.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        match chars.peek() {
            Some('{') => return Ok(None),
            Some('"') => {
                chars.next();
                let mut item = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => item.push(chars.next().ok_or_else(|| bad(text, "array"))?),
                        Some('"') => break,
                        Some(c) => item.push(c),
                        None => return Err(bad(text, "array")),
                    }
                }
                items.push(Some(item));
            }
            _ => {
                let mut item = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    chars.next();
                    if c == '\\' {
                        item.push(chars.next().ok_or_else(|| bad(text, "array"))?);
                    } else {
                        item.push(c);
                    }
                }
                let item = item.trim().to_owned();
                items.push(if item.eq_ignore_ascii_case("NULL") {
                    None
                } else {
                    Some(item)
                });
            }
        }
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(_) => return Err(bad(text, "array")),
        }
    }
    Ok(Some(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(kind: &Kind, text: &str) -> String {
        let datum = parse_text(kind, text).unwrap();
        format_text(&datum).unwrap()
    }

    #[test]
    fn dates_follow_the_proleptic_gregorian_calendar() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        for text in [
            "1970-01-01",
            "2024-02-29",
            "0001-01-01",
            "0001-12-31 BC",
            "4713-01-01 BC",
            "5874897-12-31",
            "1582-10-10",
        ] {
            assert_eq!(round_trip(&Kind::Date, text), text);
        }
        assert_eq!(
            parse_text(&Kind::Date, "infinity").unwrap(),
            Datum::String("infinity".into())
        );
    }

    #[test]
    fn timestamps_keep_microseconds_zones_and_extremes() {
        assert_eq!(
            parse_text(&Kind::TimestampTz, "1970-01-01 01:00:00+01").unwrap(),
            Datum::TimestampTz(0)
        );
        assert_eq!(
            round_trip(&Kind::TimestampTz, "2024-05-06 07:08:09.123456+05:30"),
            "2024-05-06 01:38:09.123456+00"
        );
        for text in [
            "2024-05-06 07:08:09.000001",
            "4713-01-01 00:00:00 BC",
            "0001-01-01 00:00:00 BC",
            "1999-12-31 23:59:59.999999",
        ] {
            assert_eq!(round_trip(&Kind::Timestamp, text), text);
        }
        // Beyond i64 microseconds since 1970: kept as text.
        assert_eq!(
            parse_text(&Kind::Timestamp, "294276-12-31 23:59:59.999999").unwrap(),
            Datum::String("294276-12-31 23:59:59.999999".into())
        );
        assert_eq!(
            parse_text(&Kind::TimestampTz, "-infinity").unwrap(),
            Datum::String("-infinity".into())
        );
    }

    #[test]
    fn times_and_floats_are_exact() {
        assert_eq!(round_trip(&Kind::Time, "24:00:00"), "24:00:00");
        assert_eq!(round_trip(&Kind::Time, "00:00:00.5"), "00:00:00.500000");
        for (text, expected) in [
            ("NaN", "NaN"),
            ("-Infinity", "-Infinity"),
            ("-0", "-0e0"),
            ("1.7976931348623157e+308", "1.7976931348623157e308"),
            ("5e-324", "5e-324"),
            ("0.1", "1e-1"),
        ] {
            assert_eq!(round_trip(&Kind::Float64, text), expected);
        }
        assert_eq!(round_trip(&Kind::Float32, "3.4028235e+38"), "3.4028235e38");
        assert_eq!(round_trip(&Kind::Float32, "1.1"), "1.1e0");
    }

    #[test]
    fn decimals_keep_every_digit() {
        let kind = Kind::Decimal {
            precision: 10,
            scale: 3,
        };
        for (text, expected) in [
            ("-12.345", "-12.345"),
            ("0.001", "0.001"),
            ("-0.010", "-0.010"),
            ("1234567.000", "1234567.000"),
        ] {
            assert_eq!(round_trip(&kind, text), expected);
        }
        assert_eq!(
            parse_text(&kind, "NaN").unwrap(),
            Datum::String("NaN".into())
        );
        let big = "9".repeat(1000);
        let kind = Kind::Decimal {
            precision: 1000,
            scale: 0,
        };
        assert_eq!(round_trip(&kind, &big), big);
        assert!(parse_text(&kind, "1.5").is_err());
    }

    #[test]
    fn arrays_with_nulls_quotes_and_odd_shapes() {
        let kind = Kind::Array(Box::new(Kind::Text));
        let datum = parse_text(&kind, r#"{a,"b c",NULL,"NULL","x\"y\\z",""}"#).unwrap();
        assert_eq!(
            datum,
            Datum::Array(vec![
                Datum::String("a".into()),
                Datum::String("b c".into()),
                Datum::Null,
                Datum::String("NULL".into()),
                Datum::String("x\"y\\z".into()),
                Datum::String(String::new()),
            ])
        );
        assert_eq!(
            format_text(&datum).unwrap(),
            r#"{"a","b c",NULL,"NULL","x\"y\\z",""}"#
        );
        let ints = Kind::Array(Box::new(Kind::Int32));
        assert_eq!(parse_text(&ints, "{}").unwrap(), Datum::Array(vec![]));
        assert_eq!(
            parse_text(&ints, "{{1,2},{3,4}}").unwrap(),
            Datum::String("{{1,2},{3,4}}".into())
        );
        assert_eq!(
            parse_text(&ints, "[0:1]={1,2}").unwrap(),
            Datum::String("[0:1]={1,2}".into())
        );
    }

    #[test]
    fn bytea_round_trips_and_rejects_garbage() {
        assert_eq!(round_trip(&Kind::Bytes, "\\x00ff10"), "\\x00ff10");
        assert_eq!(round_trip(&Kind::Bytes, "\\x"), "\\x");
        assert!(parse_text(&Kind::Bytes, "\\x0").is_err());
        assert!(parse_text(&Kind::Bytes, "abc").is_err());
    }

    #[test]
    fn options_escape_spaces() {
        assert!(session_settings_options().contains("-c DateStyle=ISO,\\ YMD"));
        assert!(session_settings_sql().contains("SET TimeZone = 'UTC';"));
    }

    #[test]
    fn padded_numbers_are_what_the_format_machinery_writes() {
        for v in [
            0,
            1,
            9,
            10,
            59,
            99,
            100,
            999,
            1_000,
            9_999,
            10_000,
            294_276,
            999_999,
            -1,
            -59,
            i64::MAX,
        ] {
            for width in [2, 4, 6] {
                let mut out = String::from("x");
                push_padded(&mut out, v, width);
                assert_eq!(out, format!("x{v:0width$}"), "{v} {width}");
            }
        }
    }
}
