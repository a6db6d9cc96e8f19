//! The one message codec: how a change event is laid out in Kafka, written and read.
//!
//! A record's key and value are framed the Confluent way: byte 0 = 0, four bytes of
//! schema id (big-endian), then the Avro datum. Schemas are registered under
//! `<topic>-key` and `<topic>-value` ([`crate::registry`]); any Kafka tool with a
//! registry-aware Avro deserializer reads Ferry's topics. The value is the envelope of
//! DESIGN.md §3 with `vsn` as its FIRST field, so the VSN of a record is read from its
//! front without its schema ([`framed_vsn`]): replay merges topics and the exporter
//! finds the highest VSN of a partition that way.
//!
//! - [`encode`]: the exporter's encoder. Rows are encoded in parallel without their VSN
//!   (a head and a shared `source` tail); the single stamping task writes the VSN
//!   between them ([`stamp`]). Tests and tools encode whole events with the same code
//!   ([`TableEncoder::encode_event`]).
//! - [`decode`]: the importer's, replay's and archive's decoder, for records written
//!   with any registered writer schema.
//!
//! Rows are encoded and decoded with Ferry's own Avro codec ([`crate::avro`]), which
//! writes standard Avro binary (checked against apache-avro and the registry client's
//! decoder in the tests) without building a generic value tree per row.

pub mod decode;
pub mod encode;
mod json_line;

pub use decode::{DecodedChange, EventDecoder};
pub use encode::{stamp, Encoders, Pending, SourceTemplate, TableEncoder};

use crate::avro::Reader;
use crate::position::Vsn;
use crate::registry::RegistryError;

/// Bytes of the Confluent framing (magic byte, schema id).
pub const FRAMING: usize = 5;

/// Writes the Confluent header: magic byte 0 and the schema id.
pub fn write_header(id: u32, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Splits a framed record into schema id and Avro datum.
pub fn split_header(bytes: &[u8]) -> Result<(u32, &[u8]), RegistryError> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [m, ..] if *m != 0 => Err(RegistryError::Framing(format!(
            "magic byte {m}, expected 0"
        ))),
        _ => Err(RegistryError::Framing(format!(
            "{} bytes, shorter than the 5-byte header",
            bytes.len()
        ))),
    }
}

/// The VSN of a framed change envelope, read without its schema: `vsn` is the first
/// field of every envelope schema Ferry writes ([`crate::avro::value_schema`]). `None` when the
/// bytes are not a framed record starting with a non-negative long.
pub fn framed_vsn(bytes: &[u8]) -> Option<Vsn> {
    let (_, body) = split_header(bytes).ok()?;
    let mut r = Reader::new(body);
    Vsn::from_i64(r.long().ok()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::avro;
    use crate::catalog::TableSchema;
    use crate::envelope::{ChangeEvent, Op, SourceInfo};
    use crate::value::Datum;

    /// `public.t (id bigint PRIMARY KEY)`.
    pub(crate) fn one_bigint_table() -> TableSchema {
        TableSchema {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![crate::catalog::Column {
                name: "id".into(),
                type_name: "bigint".into(),
                type_oid: 20,
                nullable: false,
                kind: crate::catalog::Kind::Int64,
            }],
            primary_key: vec![0],
            replica_identity: 'f',
        }
    }

    #[test]
    fn the_vsn_is_read_from_the_front_of_a_framed_envelope() {
        let table = one_bigint_table();
        let ty = avro::parse_schema(&avro::value_schema(&table).to_string()).unwrap();
        for vsn in [0u64, 1, 63, 64, 300, 1 << 40, i64::MAX as u64] {
            let event = ChangeEvent {
                op: Op::Create,
                before: None,
                after: Some(vec![Datum::Long(7)]),
                key: vec![Datum::Long(7)],
                ts_ms: 1,
                vsn: Vsn(vsn),
                source: SourceInfo {
                    db: "d".into(),
                    schema: "public".into(),
                    table: "t".into(),
                    snapshot: false,
                    lsn_or_scn: "0/1".into(),
                    txid: None,
                    commit_ts_ms: 1,
                },
            };
            let mut out = Vec::new();
            write_header(9, &mut out);
            avro::encode(&ty, &event.to_datum(), &mut out).unwrap();
            assert_eq!(framed_vsn(&out), Some(Vsn(vsn)));
        }
        assert_eq!(framed_vsn(&[0, 0, 0, 0, 9]), None);
        assert_eq!(framed_vsn(&[1, 0, 0, 0, 9, 2]), None);
        assert_eq!(framed_vsn(&[0, 0, 0, 0, 9, 1]), None); // -1
    }

    #[test]
    fn header_round_trip_and_errors() {
        let mut out = Vec::new();
        write_header(0x0102_0304, &mut out);
        out.push(9);
        assert_eq!(split_header(&out).unwrap(), (0x0102_0304, &[9u8][..]));
        assert!(split_header(&[1, 0, 0, 0, 1]).is_err());
        assert!(split_header(&[0, 0]).is_err());
    }
}
