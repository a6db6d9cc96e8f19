//! Snapshot chunks read with `COPY ... TO STDOUT (FORMAT binary)`.
//!
//! Parsing the text form of every value was about a fifth of the exporter's CPU per
//! snapshot row (timestamps most of it). A table goes binary only when each of its
//! columns is of a built-in type whose binary form gives exactly the value the text
//! path ([`parse_text`](ferry_shared::value::parse_text)) gives, including the values
//! that ride in the Avro string branch (`±infinity` dates and timestamps, timestamps
//! past what 64-bit microseconds since 1970 hold, numeric `NaN`). Any other column
//! (unconstrained numeric, arrays, intervals, domains, enums, ...) keeps the whole table
//! on text COPY.

use ferry_shared::catalog::{Column, Kind, TableSchema};
use ferry_shared::value::{decimal_from_base10000, write_pg_timestamp, Datum};

/// COPY binary signature (11 bytes), then flags and the header extension's length.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Days between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A column's binary form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(p,s)` with the column's scale (an unconstrained `numeric` travels as
    /// text, in its own text form, and keeps the table on text COPY).
    Numeric(u32),
    /// `text`, `varchar`, `char(n)` (padded, as `bpcharout` writes it), `name`,
    /// `json` (the text as stored).
    Text,
    /// `jsonb`: a version byte (1), then the text `jsonb_out` writes.
    Jsonb,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
}

impl Form {
    /// The binary form of a column, when its type is a built-in one read exactly in
    /// binary and the catalog gave it the matching kind.
    fn of(column: &Column) -> Option<Form> {
        Some(match (column.type_oid, &column.kind) {
            (16, Kind::Bool) => Form::Bool,
            (21, Kind::Int16) => Form::Int2,
            (23, Kind::Int32) => Form::Int4,
            (20, Kind::Int64) => Form::Int8,
            (700, Kind::Float32) => Form::Float4,
            (701, Kind::Float64) => Form::Float8,
            (1700, Kind::Decimal { scale, .. }) => Form::Numeric(*scale),
            (19 | 25 | 114 | 1042 | 1043, Kind::Text) => Form::Text,
            (3802, Kind::Text) => Form::Jsonb,
            (17, Kind::Bytes) => Form::Bytea,
            (1082, Kind::Date) => Form::Date,
            (1083, Kind::Time) => Form::Time,
            (1114, Kind::Timestamp) => Form::Timestamp,
            (1184, Kind::TimestampTz) => Form::TimestampTz,
            (2950, Kind::Uuid) => Form::Uuid,
            _ => return None,
        })
    }
}

/// The forms of every column of `table`, in column order; `None` when one has no exact
/// binary reading (the table is read as text).
pub(crate) fn forms(table: &TableSchema) -> Option<Vec<Form>> {
    table.columns.iter().map(Form::of).collect()
}

/// Reads the rows of one binary COPY out of the bytes as they arrive.
pub(crate) struct Rows {
    forms: Vec<Form>,
    header_read: bool,
    ended: bool,
}

/// What the next bytes held.
pub(crate) enum Next {
    /// A row was read into the row buffer; this many bytes were used.
    Row(usize),
    /// The trailer: the COPY's data ends (this many bytes were used).
    End(usize),
    /// More bytes are needed.
    More,
}

impl Rows {
    pub(crate) fn new(forms: Vec<Form>) -> Self {
        Rows {
            forms,
            header_read: false,
            ended: false,
        }
    }

    /// True once the trailer was read.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// Reads the header (once) and the next row or the trailer from the start of `buf`
    /// into `row`. Errors name the table and column.
    pub(crate) fn next(
        &mut self,
        table: &TableSchema,
        buf: &[u8],
        row: &mut Vec<Datum>,
    ) -> Result<Next, String> {
        let mut at = 0;
        if !self.header_read {
            let fixed = SIGNATURE.len() + 8;
            if buf.len() < fixed {
                return Ok(Next::More);
            }
            if &buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(format!(
                    "table {table}: binary COPY did not start with its signature"
                ));
            }
            let extension = be_u32(&buf[SIGNATURE.len() + 4..fixed]) as usize;
            if buf.len() < fixed + extension {
                return Ok(Next::More);
            }
            at = fixed + extension;
        }
        let Some(count) = buf.get(at..at + 2) else {
            return Ok(Next::More);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            self.header_read = true;
            self.ended = true;
            return Ok(Next::End(at + 2));
        }
        if count as usize != self.forms.len() {
            return Err(format!(
                "table {table}: binary COPY sent {count} columns, expected {}",
                self.forms.len()
            ));
        }
        // The whole row must be there before any value is read.
        let mut end = at + 2;
        for _ in 0..count {
            let Some(len) = buf.get(end..end + 4) else {
                return Ok(Next::More);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            end += 4 + usize::try_from(len).unwrap_or(0);
            if end > buf.len() {
                return Ok(Next::More);
            }
        }
        self.header_read = true;
        row.clear();
        let mut pos = at + 2;
        for (form, column) in self.forms.iter().zip(&table.columns) {
            let len = i32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
            pos += 4;
            if len < 0 {
                row.push(Datum::Null);
                continue;
            }
            let value = &buf[pos..pos + len as usize];
            pos += len as usize;
            row.push(read_value(*form, value).map_err(|what| {
                format!(
                    "table {table} column {}: binary COPY value {what}",
                    column.name
                )
            })?);
        }
        Ok(Next::Row(end))
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn fixed<const N: usize>(value: &[u8]) -> Result<[u8; N], String> {
    value
        .try_into()
        .map_err(|_| format!("has {} bytes, expected {N}", value.len()))
}

/// One value in its binary form as the [`Datum`] the text path makes of its text form.
fn read_value(form: Form, value: &[u8]) -> Result<Datum, String> {
    Ok(match form {
        Form::Bool => Datum::Bool(fixed::<1>(value)?[0] != 0),
        Form::Int2 => Datum::Int(i32::from(i16::from_be_bytes(fixed(value)?))),
        Form::Int4 => Datum::Int(i32::from_be_bytes(fixed(value)?)),
        Form::Int8 => Datum::Long(i64::from_be_bytes(fixed(value)?)),
        Form::Float4 => Datum::Float(f32::from_be_bytes(fixed(value)?)),
        Form::Float8 => Datum::Double(f64::from_be_bytes(fixed(value)?)),
        Form::Numeric(scale) => read_numeric(value, scale)?,
        Form::Text => Datum::String(
            std::str::from_utf8(value)
                .map_err(|_| "is not UTF-8".to_owned())?
                .to_owned(),
        ),
        Form::Jsonb => match value.split_first() {
            Some((1, text)) => Datum::String(
                std::str::from_utf8(text)
                    .map_err(|_| "is not UTF-8".to_owned())?
                    .to_owned(),
            ),
            Some((version, _)) => return Err(format!("jsonb has the unknown version {version}")),
            None => return Err("jsonb is empty".into()),
        },
        Form::Bytea => Datum::Bytes(value.to_vec()),
        Form::Date => match i32::from_be_bytes(fixed(value)?) {
            i32::MAX => Datum::String("infinity".into()),
            i32::MIN => Datum::String("-infinity".into()),
            days => i32::try_from(i64::from(days) + PG_EPOCH_DAYS)
                .map(Datum::Date)
                .map_err(|_| format!("date {days} is out of range"))?,
        },
        Form::Time => Datum::Time(i64::from_be_bytes(fixed(value)?)),
        Form::Timestamp | Form::TimestampTz => {
            let zone = form == Form::TimestampTz;
            match i64::from_be_bytes(fixed(value)?) {
                i64::MAX => Datum::String("infinity".into()),
                i64::MIN => Datum::String("-infinity".into()),
                pg => match pg.checked_add(PG_EPOCH_DAYS * MICROS_PER_DAY) {
                    Some(micros) if zone => Datum::TimestampTz(micros),
                    Some(micros) => Datum::Timestamp(micros),
                    None => {
                        let mut text = String::new();
                        write_pg_timestamp(
                            pg.div_euclid(MICROS_PER_DAY) + PG_EPOCH_DAYS,
                            pg.rem_euclid(MICROS_PER_DAY),
                            zone,
                            &mut text,
                        );
                        Datum::String(text)
                    }
                },
            }
        }
        Form::Uuid => {
            let b = fixed::<16>(value)?;
            let mut text = String::with_capacity(36);
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    text.push('-');
                }
                text.push(char::from(HEX[usize::from(byte >> 4)]));
                text.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
            Datum::String(text)
        }
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `numeric_send`'s form: digit count, weight, sign, display scale (16 bits each), then
/// the base-10000 digits.
fn read_numeric(value: &[u8], scale: u32) -> Result<Datum, String> {
    let word = |i: usize| -> Result<u16, String> {
        value
            .get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("numeric has {} bytes, too few", value.len()))
    };
    let ndigits = word(0)? as i16;
    let weight = word(1)? as i16;
    let sign = word(2)?;
    if ndigits < 0 || value.len() != 8 + 2 * ndigits as usize {
        return Err(format!(
            "numeric has {} bytes for {ndigits} digits",
            value.len()
        ));
    }
    let special = |text: &str| Ok(Datum::String(text.to_owned()));
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return special("NaN"),
        0xD000 => return special("Infinity"),
        0xF000 => return special("-Infinity"),
        other => return Err(format!("numeric has the unknown sign {other:#06x}")),
    };
    // On the stack up to numeric(128) (32 base-10000 digits): no allocation per value.
    let n = ndigits as usize;
    let mut small = [0i16; 32];
    let mut large = Vec::new();
    let digits: &mut [i16] = if n <= small.len() {
        &mut small[..n]
    } else {
        large.resize(n, 0);
        &mut large
    };
    for (i, d) in digits.iter_mut().enumerate() {
        *d = word(4 + i)? as i16;
    }
    decimal_from_base10000(negative, weight, digits, scale)
        .map(Datum::Decimal)
        .ok_or_else(|| format!("numeric does not fit the column's scale {scale}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_shared::catalog::Column;

    fn table(forms: &[(u32, Kind)]) -> TableSchema {
        TableSchema {
            schema: "public".into(),
            name: "t".into(),
            columns: forms
                .iter()
                .enumerate()
                .map(|(i, (oid, kind))| Column {
                    name: format!("c{i}"),
                    type_name: String::new(),
                    type_oid: *oid,
                    nullable: true,
                    kind: kind.clone(),
                })
                .collect(),
            primary_key: vec![],
            replica_identity: 'f',
        }
    }

    fn payload(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for v in *row {
                match v {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn only_tables_of_exact_built_in_types_go_binary() {
        let t = table(&[
            (20, Kind::Int64),
            (1043, Kind::Text),
            (1184, Kind::TimestampTz),
        ]);
        assert_eq!(
            forms(&t),
            Some(vec![Form::Int8, Form::Text, Form::TimestampTz])
        );
        assert_eq!(
            forms(&table(&[(
                1700,
                Kind::Decimal {
                    precision: 10,
                    scale: 2
                }
            )])),
            Some(vec![Form::Numeric(2)])
        );
        assert_eq!(
            forms(&table(&[(114, Kind::Text), (3802, Kind::Text)])),
            Some(vec![Form::Text, Form::Jsonb])
        );
        // Not listed: an unconstrained numeric (a text kind whose binary form is not its
        // text), interval, arrays, a domain over int (its own OID).
        for other in [
            (1700, Kind::Text),
            (1186, Kind::Text),
            (1007, Kind::Array(Box::new(Kind::Int32))),
            (90_000, Kind::Int32),
        ] {
            assert_eq!(
                forms(&table(&[(20, Kind::Int64), other.clone()])),
                None,
                "{other:?}"
            );
        }
    }

    #[test]
    fn reads_rows_split_anywhere_and_the_trailer() {
        let t = table(&[(20, Kind::Int64), (25, Kind::Text), (1082, Kind::Date)]);
        let bytes = payload(&[
            &[
                Some(&7i64.to_be_bytes()),
                Some("é\tx".as_bytes()),
                Some(&0i32.to_be_bytes()),
            ],
            &[
                Some(&(-1i64).to_be_bytes()),
                None,
                Some(&i32::MAX.to_be_bytes()),
            ],
        ]);
        // Fed one byte at a time, as arriving data could be cut.
        for cut in [1, 3, bytes.len()] {
            let mut rows = Rows::new(forms(&t).unwrap());
            let mut pending: Vec<u8> = Vec::new();
            let mut got = Vec::new();
            let mut row = Vec::new();
            for piece in bytes.chunks(cut) {
                pending.extend_from_slice(piece);
                loop {
                    match rows.next(&t, &pending, &mut row).unwrap() {
                        Next::Row(used) => {
                            got.push(row.clone());
                            pending.drain(..used);
                        }
                        Next::End(used) => {
                            pending.drain(..used);
                            break;
                        }
                        Next::More => break,
                    }
                }
            }
            assert!(rows.ended());
            assert!(pending.is_empty());
            assert_eq!(
                got,
                vec![
                    vec![
                        Datum::Long(7),
                        Datum::String("é\tx".into()),
                        Datum::Date(10_957)
                    ],
                    vec![
                        Datum::Long(-1),
                        Datum::Null,
                        Datum::String("infinity".into())
                    ],
                ],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn values_outside_what_the_avro_types_hold_come_as_postgresql_writes_them() {
        // 294276-12-31 23:59:59.5 (PostgreSQL's last year): past i64 microseconds since
        // 1970, so it travels as text, as the text path keeps it.
        let pg: i64 = 9_223_371_331_200_000_000 - 500_000;
        let d = read_value(Form::TimestampTz, &pg.to_be_bytes()).unwrap();
        assert_eq!(d, Datum::String("294276-12-31 23:59:59.5+00".into()));
        let d = read_value(Form::Timestamp, &i64::MIN.to_be_bytes()).unwrap();
        assert_eq!(d, Datum::String("-infinity".into()));
        let uuid = [
            0xa0u8, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(
            read_value(Form::Uuid, &uuid).unwrap(),
            Datum::String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        assert!(read_value(Form::Int4, &[0, 1])
            .unwrap_err()
            .contains("expected 4"));
        assert!(read_value(Form::Text, &[0xff])
            .unwrap_err()
            .contains("UTF-8"));
    }
}
