//! Reading framed keys and envelopes written with any registered writer schema: what
//! the importer applies, what replay and archive write out.
//!
//! Decoders of external bytes never panic: a record that is not a Ferry envelope is an
//! error naming what is wrong ([`RegistryError::Envelope`], [`RegistryError::Framing`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::avro::{self, AvroType, Reader, RecordType};
use crate::envelope::{DecodedEvent, Op, SourceInfo};
use crate::position::Vsn;
use crate::registry::{RegistryClient, RegistryError};
use crate::value::Datum;

use super::split_header;

/// Reads framed keys and envelopes written with any registered schema.
#[derive(Clone, Debug)]
pub struct EventDecoder {
    pub(super) registry: RegistryClient,
    /// Per writer schema id: where the envelope's fields are ([`EventDecoder::decode_change`]).
    plans: Arc<std::sync::RwLock<HashMap<u32, Arc<EnvelopePlan>>>>,
}

/// The parts of an envelope that applying it needs, read without building `source`
/// ([`EventDecoder::decode_change`]). The table's names borrow from the record.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedChange<'a> {
    /// The row record of the writer schema (column names in `FieldType::column`).
    pub row_type: Arc<RecordType>,
    /// The row before.
    pub before: Option<Vec<Datum>>,
    /// The row after.
    pub after: Option<Vec<Datum>>,
    /// What happened.
    pub op: Op,
    /// Its place in the stream.
    pub vsn: Vsn,
    /// `source.schema`.
    pub schema: &'a str,
    /// `source.table`.
    pub table: &'a str,
}

/// What to do with each field of a writer schema's envelope, in writer order.
#[derive(Debug)]
pub(super) struct EnvelopePlan {
    pub(super) fields: Vec<(Slot, AvroType)>,
    pub(super) row_type: Arc<RecordType>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Slot {
    Before,
    After,
    Op,
    Vsn,
    /// The `source` record: [`EventDecoder::decode_change`] reads its schema and table
    /// and skips the rest; a JSON line also reads its position, txid and commit time.
    Source,
    Skip,
}

/// The row record of an envelope schema: the record branch of `before`.
fn row_type_of(envelope: &RecordType) -> Result<Arc<RecordType>, RegistryError> {
    envelope
        .fields
        .iter()
        .find(|f| f.name == "before")
        .and_then(|f| match &f.ty {
            AvroType::Union(b) => b.iter().find_map(|t| match t {
                AvroType::Record(r) => Some(r.clone()),
                _ => None,
            }),
            _ => None,
        })
        .ok_or_else(|| RegistryError::Envelope("no row record in \"before\"".into()))
}

/// An envelope's `op` field.
pub(super) fn read_op(r: &mut Reader<'_>) -> Result<Op, RegistryError> {
    let code = std::str::from_utf8(r.bytes()?)
        .map_err(|_| RegistryError::Envelope("op is not UTF-8".into()))?;
    Op::from_code(code).ok_or_else(|| RegistryError::Envelope("unknown op".into()))
}

/// An envelope's `vsn` field.
pub(super) fn read_vsn(r: &mut Reader<'_>) -> Result<Vsn, RegistryError> {
    Vsn::from_i64(r.long()?).ok_or_else(|| RegistryError::Envelope("negative vsn".into()))
}

impl EnvelopePlan {
    fn of(ty: &AvroType) -> Result<EnvelopePlan, RegistryError> {
        let bad = |m: &str| RegistryError::Envelope(m.to_owned());
        let AvroType::Record(record) = ty else {
            return Err(bad("schema is not a record"));
        };
        let mut fields = Vec::with_capacity(record.fields.len());
        for f in &record.fields {
            let slot = match f.name.as_str() {
                "before" => Slot::Before,
                "after" => Slot::After,
                "op" if f.ty == AvroType::String => Slot::Op,
                "op" => return Err(bad("op is not a string")),
                "vsn" if f.ty == AvroType::Long => Slot::Vsn,
                "vsn" => return Err(bad("vsn is not a long")),
                "source" => match &f.ty {
                    AvroType::Record(src) => {
                        for name in ["schema", "table"] {
                            if src.field_index(name).map(|i| &src.fields[i].ty)
                                != Some(&AvroType::String)
                            {
                                return Err(RegistryError::Envelope(format!(
                                    "source has no string field {name:?}"
                                )));
                            }
                        }
                        Slot::Source
                    }
                    _ => return Err(bad("no source record")),
                },
                _ => Slot::Skip,
            };
            fields.push((slot, f.ty.clone()));
        }
        for (slot, name) in [
            (Slot::Before, "before"),
            (Slot::After, "after"),
            (Slot::Op, "op"),
            (Slot::Vsn, "vsn"),
            (Slot::Source, "source"),
        ] {
            if !fields.iter().any(|(s, _)| *s == slot) {
                return Err(RegistryError::Envelope(format!("no field {name:?}")));
            }
        }
        Ok(EnvelopePlan {
            fields,
            row_type: row_type_of(record)?,
        })
    }
}

impl EventDecoder {
    /// A decoder fetching writer schemas from `registry`.
    pub fn new(registry: RegistryClient) -> Self {
        EventDecoder {
            registry,
            plans: Arc::default(),
        }
    }

    pub(super) async fn plan(&self, id: u32) -> Result<Arc<EnvelopePlan>, RegistryError> {
        if let Some(p) = self.plans.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(p);
        }
        let ty = self.registry.schema(id).await?;
        let plan = Arc::new(EnvelopePlan::of(&ty)?);
        if let Ok(mut m) = self.plans.write() {
            m.insert(id, plan.clone());
        }
        Ok(plan)
    }

    /// Decodes what applying a framed change envelope needs: the rows, op, VSN and the
    /// table's names; the rest of `source` is skipped, not built.
    pub async fn decode_change<'a>(
        &self,
        bytes: &'a [u8],
    ) -> Result<DecodedChange<'a>, RegistryError> {
        let (id, body) = split_header(bytes)?;
        let plan = self.plan(id).await?;
        let mut r = Reader::new(body);
        let row = |d: Datum| -> Result<Option<Vec<Datum>>, RegistryError> {
            match d {
                Datum::Null => Ok(None),
                Datum::Record(v) => Ok(Some(v)),
                _ => Err(RegistryError::Envelope("row is not a record".into())),
            }
        };
        let (mut before, mut after, mut op, mut vsn) = (None, None, None, None);
        let (mut schema, mut table) = ("", "");
        for (slot, ty) in &plan.fields {
            match slot {
                Slot::Before => before = row(avro::decode(ty, &mut r)?)?,
                Slot::After => after = row(avro::decode(ty, &mut r)?)?,
                Slot::Op => op = Some(read_op(&mut r)?),
                Slot::Vsn => vsn = Some(read_vsn(&mut r)?),
                Slot::Source => {
                    let AvroType::Record(src) = ty else {
                        return Err(RegistryError::Envelope("no source record".into()));
                    };
                    for f in &src.fields {
                        match f.name.as_str() {
                            "schema" | "table" => {
                                let s = std::str::from_utf8(r.bytes()?).map_err(|_| {
                                    RegistryError::Envelope(format!(
                                        "source.{} is not UTF-8",
                                        f.name
                                    ))
                                })?;
                                if f.name == "schema" {
                                    schema = s;
                                } else {
                                    table = s;
                                }
                            }
                            _ => avro::skip(&f.ty, &mut r)?,
                        }
                    }
                }
                Slot::Skip => avro::skip(ty, &mut r)?,
            }
        }
        Ok(DecodedChange {
            row_type: plan.row_type.clone(),
            before,
            after,
            op: op.ok_or_else(|| RegistryError::Envelope("no field \"op\"".into()))?,
            vsn: vsn.ok_or_else(|| RegistryError::Envelope("no field \"vsn\"".into()))?,
            schema,
            table,
        })
    }

    /// Decodes a framed record to a generic value.
    pub async fn decode_datum(
        &self,
        bytes: &[u8],
    ) -> Result<(Arc<AvroType>, Datum), RegistryError> {
        let (id, body) = split_header(bytes)?;
        let ty = self.registry.schema(id).await?;
        let mut reader = Reader::new(body);
        let datum = avro::decode(&ty, &mut reader)?;
        Ok((ty, datum))
    }

    /// Decodes a framed key record to its column values.
    pub async fn decode_key(&self, bytes: &[u8]) -> Result<Vec<Datum>, RegistryError> {
        match self.decode_datum(bytes).await? {
            (_, Datum::Record(values)) => Ok(values),
            _ => Err(RegistryError::Envelope("key is not a record".into())),
        }
    }

    /// Decodes a framed change envelope.
    pub async fn decode_event(&self, bytes: &[u8]) -> Result<DecodedEvent, RegistryError> {
        let (ty, datum) = self.decode_datum(bytes).await?;
        envelope_from_datum(&ty, datum)
    }
}

fn envelope_from_datum(ty: &AvroType, datum: Datum) -> Result<DecodedEvent, RegistryError> {
    let bad = |m: &str| RegistryError::Envelope(m.to_owned());
    let AvroType::Record(record) = ty else {
        return Err(bad("schema is not a record"));
    };
    let Datum::Record(mut fields) = datum else {
        return Err(bad("value is not a record"));
    };
    let mut take = |name: &str| -> Result<Datum, RegistryError> {
        let i = record
            .field_index(name)
            .ok_or_else(|| RegistryError::Envelope(format!("no field {name:?}")))?;
        Ok(std::mem::replace(&mut fields[i], Datum::Null))
    };
    let row = |d: Datum| -> Result<Option<Vec<Datum>>, RegistryError> {
        match d {
            Datum::Null => Ok(None),
            Datum::Record(v) => Ok(Some(v)),
            _ => Err(RegistryError::Envelope("row is not a record".into())),
        }
    };
    let before = row(take("before")?)?;
    let after = row(take("after")?)?;
    let op = match take("op")? {
        Datum::String(s) => Op::from_code(&s).ok_or_else(|| bad("unknown op"))?,
        _ => return Err(bad("op is not a string")),
    };
    let long = |d: Datum, what: &str| match d {
        Datum::Long(v) => Ok(v),
        _ => Err(RegistryError::Envelope(format!("{what} is not a long"))),
    };
    let ts_ms = long(take("ts_ms")?, "ts_ms")?;
    let vsn = Vsn::from_i64(long(take("vsn")?, "vsn")?).ok_or_else(|| bad("negative vsn"))?;
    let source = take("source")?;
    let row_type = row_type_of(record)?;
    let source_type = record
        .fields
        .iter()
        .find(|f| f.name == "source")
        .and_then(|f| match &f.ty {
            AvroType::Record(r) => Some(r.clone()),
            _ => None,
        })
        .ok_or_else(|| bad("no source record"))?;
    let Datum::Record(mut src) = source else {
        return Err(bad("source is not a record"));
    };
    let mut sfield = |name: &str| -> Datum {
        source_type
            .field_index(name)
            .map(|i| std::mem::replace(&mut src[i], Datum::Null))
            .unwrap_or(Datum::Null)
    };
    let string = |d: Datum| match d {
        Datum::String(s) => s,
        _ => String::new(),
    };
    let source = SourceInfo {
        db: string(sfield("db")),
        schema: string(sfield("schema")),
        table: string(sfield("table")),
        snapshot: matches!(sfield("snapshot"), Datum::Bool(true)),
        lsn_or_scn: string(sfield("lsn_or_scn")),
        txid: match sfield("txid") {
            Datum::Long(v) => Some(v),
            _ => None,
        },
        commit_ts_ms: match sfield("commit_ts_ms") {
            Datum::Long(v) => v,
            _ => 0,
        },
    };
    Ok(DecodedEvent {
        row_type,
        before,
        after,
        op,
        ts_ms,
        vsn,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::one_bigint_table;

    #[test]
    fn envelope_plans_find_the_fields_or_name_the_missing_one() {
        let table = one_bigint_table();
        let value = avro::parse_schema(&avro::value_schema(&table).to_string()).unwrap();
        let plan = EnvelopePlan::of(&value).unwrap();
        let slots: Vec<Slot> = plan.fields.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            slots,
            [
                Slot::Vsn,
                Slot::Before,
                Slot::After,
                Slot::Op,
                Slot::Skip,
                Slot::Source
            ]
        );
        assert_eq!(plan.row_type.fields[0].column, "id");
        let key = avro::parse_schema(&avro::key_schema(&table).to_string()).unwrap();
        let err = EnvelopePlan::of(&key).unwrap_err().to_string();
        assert!(err.contains("no field \"before\""), "{err}");
    }
}
