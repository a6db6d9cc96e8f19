//! Talking to a Confluent-compatible schema registry, and the Confluent wire format.
//!
//! Schemas are registered and fetched with `schema_registry_converter`'s registry client,
//! so the same code works against Ferry's built-in registry (served by the coordinator)
//! and any external one (Confluent, Karapace, Apicurio, Redpanda). Values are framed the
//! Confluent way: byte 0 = 0, four bytes of schema id (big-endian), then the Avro datum.
//! Any Kafka tool with a registry-aware Avro deserializer reads Ferry's topics.
//!
//! Encoding and decoding of rows use Ferry's own Avro codec ([`crate::avro`]), which
//! writes standard Avro binary (checked against apache-avro and the converter's decoder
//! in the tests) without building a generic value tree per row.

use std::collections::HashMap;
use std::sync::Arc;

use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use tokio::sync::RwLock;

use crate::avro::{self, AvroError, AvroType, Reader, RecordType};
use crate::catalog::TableSchema;
use crate::envelope::{ChangeEvent, DecodedEvent, Op, SourceInfo};
use crate::position::Vsn;
use crate::topics;
use crate::value::Datum;

/// Why the registry or a framed record failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused or could not be reached.
    #[error("schema registry at {url}: {message}")]
    Registry {
        /// Registry URL.
        url: String,
        /// What it said.
        message: String,
        /// Worth retrying.
        retriable: bool,
        /// The HTTP status of its answer, when it answered.
        status: Option<u16>,
    },
    /// A schema from the registry is not one Ferry can read.
    #[error("schema {id} from the registry")]
    Schema {
        /// Schema id.
        id: u32,
        /// Why.
        #[source]
        source: AvroError,
    },
    /// Bytes not in the Confluent wire format.
    #[error("record is not in the Confluent wire format: {0}")]
    Framing(String),
    /// The Avro datum could not be written or read.
    #[error(transparent)]
    Avro(#[from] AvroError),
    /// The envelope does not have Ferry's layout.
    #[error("record is not a Ferry change envelope: {0}")]
    Envelope(String),
}

/// A registry client with caches (schemas by id; ids by subject and schema text).
#[derive(Clone)]
pub struct RegistryClient {
    url: String,
    settings: Arc<SrSettings>,
    by_id: Arc<RwLock<HashMap<u32, Arc<AvroType>>>>,
    ids: Arc<RwLock<HashMap<(String, String), u32>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .finish()
    }
}

impl RegistryClient {
    /// A client for the registry at `url`, with optional basic auth.
    pub fn new(url: &str, basic_auth: Option<(&str, Option<&str>)>) -> Result<Self, RegistryError> {
        let mut builder = SrSettings::new_builder(url.trim_end_matches('/').to_owned());
        if let Some((user, password)) = basic_auth {
            builder.set_basic_authorization(user, password);
        }
        let settings = builder.build().map_err(|e| RegistryError::Registry {
            url: url.to_owned(),
            message: e.error.clone(),
            retriable: false,
            status: None,
        })?;
        Ok(RegistryClient {
            url: url.to_owned(),
            settings: Arc::new(settings),
            by_id: Arc::default(),
            ids: Arc::default(),
        })
    }

    /// A client for the registry `config` names (`schema_registry.url`, or the
    /// coordinator's built-in one), with its basic-auth credentials.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, RegistryError> {
        let sr = &config.schema_registry;
        let auth = sr
            .username
            .as_deref()
            .map(|u| (u, sr.password.as_ref().map(|p| p.expose())));
        RegistryClient::new(&config.registry_url(), auth)
    }

    /// The registry URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, e: schema_registry_converter::error::SRCError) -> RegistryError {
        let message = match &e.cause {
            Some(cause) => format!("{}: {cause}", e.error),
            None => e.error.clone(),
        };
        RegistryError::Registry {
            url: self.url.clone(),
            status: http_status(&e.error),
            message,
            retriable: e.retriable,
        }
    }

    /// Registers `schema` (Avro JSON) under `subject` and returns its id; registering the
    /// same schema again returns the same id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let key = (subject.to_owned(), schema.to_owned());
        if let Some(id) = self.ids.read().await.get(&key) {
            return Ok(*id);
        }
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        let registered = post_schema(&self.settings, subject.to_owned(), supplied)
            .await
            .map_err(|e| self.error(e))?;
        let parsed = avro::parse_schema(schema).map_err(|source| RegistryError::Schema {
            id: registered.id,
            source,
        })?;
        self.by_id
            .write()
            .await
            .insert(registered.id, Arc::new(parsed));
        self.ids.write().await.insert(key, registered.id);
        Ok(registered.id)
    }

    /// The schema with id `id`, parsed (fetched once, then cached).
    pub async fn schema(&self, id: u32) -> Result<Arc<AvroType>, RegistryError> {
        if let Some(ty) = self.by_id.read().await.get(&id) {
            return Ok(ty.clone());
        }
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| self.error(e))?;
        let parsed = Arc::new(
            avro::parse_schema(&registered.schema)
                .map_err(|source| RegistryError::Schema { id, source })?,
        );
        self.by_id.write().await.insert(id, parsed.clone());
        Ok(parsed)
    }
}

/// Writes the Confluent header: magic byte 0 and the schema id.
pub fn write_header(id: u32, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
}

/// The status in the client's "HTTP request to schema registry failed with status 409
/// Conflict" (the only place it reports one).
fn http_status(error: &str) -> Option<u16> {
    let (_, rest) = error.split_once("with status ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
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
/// field of every envelope schema Ferry writes ([`avro::value_schema`]). `None` when the
/// bytes are not a framed record starting with a non-negative long.
pub fn framed_vsn(bytes: &[u8]) -> Option<Vsn> {
    let (_, body) = split_header(bytes).ok()?;
    let mut r = Reader::new(body);
    Vsn::from_i64(r.long().ok()?)
}

/// The registered key and value schemas of one table's topic, ready to encode events.
#[derive(Clone, Debug)]
pub struct TableCodec {
    /// The table's topic.
    pub topic: String,
    key_id: u32,
    value_id: u32,
    key_type: Arc<AvroType>,
    value_type: Arc<AvroType>,
}

impl TableCodec {
    /// Generates the table's schemas and registers them under `<topic>-key` and
    /// `<topic>-value`.
    pub async fn register(
        registry: &RegistryClient,
        topic: &str,
        table: &TableSchema,
    ) -> Result<TableCodec, RegistryError> {
        let key_schema = avro::key_schema(table).to_string();
        let value_schema = avro::value_schema(table).to_string();
        let key_id = registry
            .register(&topics::key_subject(topic), &key_schema)
            .await?;
        let value_id = registry
            .register(&topics::value_subject(topic), &value_schema)
            .await?;
        Ok(TableCodec {
            topic: topic.to_owned(),
            key_id,
            value_id,
            key_type: registry.schema(key_id).await?,
            value_type: registry.schema(value_id).await?,
        })
    }

    /// The registry ids of the key and value schemas.
    pub fn ids(&self) -> (u32, u32) {
        (self.key_id, self.value_id)
    }

    /// The framed key record of an event.
    pub fn encode_key(&self, key: &[Datum], out: &mut Vec<u8>) -> Result<(), RegistryError> {
        write_header(self.key_id, out);
        avro::encode(&self.key_type, &Datum::Record(key.to_vec()), out)?;
        Ok(())
    }

    /// The framed value record of an event.
    pub fn encode_value(
        &self,
        event: &ChangeEvent,
        out: &mut Vec<u8>,
    ) -> Result<(), RegistryError> {
        write_header(self.value_id, out);
        avro::encode(&self.value_type, &event.to_datum(), out)?;
        Ok(())
    }
}

/// Reads framed keys and envelopes written with any registered schema.
#[derive(Clone, Debug)]
pub struct EventDecoder {
    registry: RegistryClient,
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
struct EnvelopePlan {
    fields: Vec<(Slot, AvroType)>,
    row_type: Arc<RecordType>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    Before,
    After,
    Op,
    Vsn,
    /// A field of `source`: its schema and table are read, the rest skipped.
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

    async fn plan(&self, id: u32) -> Result<Arc<EnvelopePlan>, RegistryError> {
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
                Slot::Op => {
                    let code = std::str::from_utf8(r.bytes()?)
                        .map_err(|_| RegistryError::Envelope("op is not UTF-8".into()))?;
                    op = Some(
                        Op::from_code(code)
                            .ok_or_else(|| RegistryError::Envelope("unknown op".into()))?,
                    );
                }
                Slot::Vsn => {
                    vsn = Some(
                        Vsn::from_i64(r.long()?)
                            .ok_or_else(|| RegistryError::Envelope("negative vsn".into()))?,
                    );
                }
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

    /// `public.t (id bigint PRIMARY KEY)`.
    fn one_bigint_table() -> TableSchema {
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
    fn the_http_status_is_read_from_the_clients_message() {
        assert_eq!(
            http_status("HTTP request to schema registry failed with status 409 Conflict"),
            Some(409)
        );
        assert_eq!(http_status("http call to schema registry failed"), None);
    }

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
