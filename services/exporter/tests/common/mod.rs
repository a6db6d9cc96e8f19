//! Helpers shared by the exporter's integration tests: a registry per test, a config
//! per test, reading a stream back and rebuilding table contents from it.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_shared::catalog::{load_table, TableName, TableSchema, TypeCatalog};
use ferry_shared::checkpoint::{checkpoint_key, ExporterCheckpoint};
use ferry_shared::codec::EventDecoder;
use ferry_shared::config::Config;
use ferry_shared::envelope::Op;
use ferry_shared::kafka;
use ferry_shared::position::{Lsn, Vsn};
use ferry_shared::registry::RegistryClient;
use ferry_shared::topics::{Stream, Topics};
use ferry_shared::value::{parse_text, session_settings_sql, Datum};
use ferry_testkit::{unique_name, Stack};
use tokio_postgres::{Client, SimpleQueryMessage};

/// One test's migration: its source database, ferry.toml text and parsed config.
pub struct Migration {
    pub id: String,
    pub db: String,
    pub toml: String,
    pub config: Config,
    pub registry: String,
}

impl Migration {
    /// A new source database and a config for it (`extra_exporter`: lines of `[exporter]`).
    pub async fn new(prefix: &str, partitions: u32, extra_exporter: &str) -> Result<Migration> {
        let stack = Stack::get();
        let db = stack.source.create_database(prefix).await?;
        let id = unique_name(prefix)
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let id: String = id.chars().take(40).collect();
        // The coordinator's address as the configuration gives it (`host:port`): a
        // registry of the test's own.
        let registry = ferry_testkit::serve_registry(None)
            .await?
            .trim_start_matches("http://")
            .to_owned();
        let mut toml = stack.config_toml(&id, &db, "unused_t", "unused_r", &registry);
        toml = toml.replacen(
            "[migration]\n",
            &format!("[migration]\npartitions = {partitions}\n"),
            1,
        );
        toml.push_str(&format!("\n[exporter]\n{extra_exporter}\n"));
        let config = Config::from_toml_str(&toml).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(Migration {
            id,
            db,
            toml,
            config,
            registry,
        })
    }

    pub async fn source(&self) -> Result<Client> {
        let c = Stack::get().source.connect(&self.db).await?;
        c.batch_execute(&session_settings_sql()).await?;
        Ok(c)
    }

    pub fn topics(&self) -> Topics {
        Topics::new(self.config.migration.topic_prefix())
    }

    pub fn kafka(&self) -> rdkafka::ClientConfig {
        self.config.kafka.client_config()
    }

    /// The stored checkpoint, if any.
    pub async fn checkpoint(&self) -> Result<Option<ExporterCheckpoint>> {
        let state = kafka::read_compacted(&self.kafka(), &self.topics().state()).await?;
        Ok(match state.get(checkpoint_key(Stream::Source).as_bytes()) {
            Some(b) => Some(ExporterCheckpoint::from_json(b)?),
            None => None,
        })
    }

    /// Waits until a checkpoint's LSN passed `lsn`.
    pub async fn wait_checkpoint_past(
        &self,
        lsn: Lsn,
        deadline: Duration,
    ) -> Result<ExporterCheckpoint> {
        ferry_testkit::wait_until(&format!("a checkpoint past {lsn}"), deadline, || async {
            Ok(self
                .checkpoint()
                .await?
                .filter(|c| c.lsn > lsn && c.snapshot.done))
        })
        .await
    }

    /// Commits a marker write to `table` and waits until the exporter checkpointed past it.
    pub async fn sync(
        &self,
        client: &Client,
        sql: &str,
        deadline: Duration,
    ) -> Result<ExporterCheckpoint> {
        // The position is read after the statement committed. (Read before, a keepalive
        // could move the checkpoint past it while the transaction was still on its way.)
        // WAL records start 8-byte aligned, so the insert position is at most 7 bytes past
        // the end of our commit record, which is what the checkpoint records; no other
        // record boundary lies in between.
        client.batch_execute(sql).await?;
        let row = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?;
        let lsn: Lsn = row.get::<_, String>(0).parse()?;
        self.wait_checkpoint_past(Lsn(lsn.0.saturating_sub(8)), deadline)
            .await
    }
}

/// One event read back.
#[derive(Clone, Debug)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<Datum>,
    pub op: Op,
    pub vsn: Vsn,
    pub before: Option<Vec<Datum>>,
    pub after: Option<Vec<Datum>>,
    pub lsn: String,
    pub txid: Option<i64>,
}

/// Every event of a topic, decoded.
pub async fn read_topic(m: &Migration, topic: &str) -> Result<Vec<Read>> {
    let decoder = EventDecoder::new(RegistryClient::new(
        &format!("http://{}", m.registry),
        None,
    )?);
    let records = kafka::read_all(&m.kafka(), topic).await?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let key = decoder
            .decode_key(r.key.as_deref().context("no key")?)
            .await?;
        let value = r.value.as_deref().context("no value")?;
        let e = decoder.decode_event(value).await?;
        // The VSN is readable without the schema, and no header is written per record.
        assert_eq!(ferry_shared::codec::framed_vsn(value), Some(e.vsn));
        assert!(r.headers.is_empty(), "record headers: {:?}", r.headers);
        out.push(Read {
            partition: r.partition,
            offset: r.offset,
            key,
            op: e.op,
            vsn: e.vsn,
            before: e.before,
            after: e.after,
            lsn: e.source.lsn_or_scn,
            txid: e.source.txid,
        });
    }
    Ok(out)
}

/// Checks that VSNs strictly increase inside each partition.
pub fn assert_vsns_increase_per_partition(topic: &str, events: &[Read]) {
    let mut last: HashMap<i32, (i64, Vsn)> = HashMap::new();
    let mut sorted: Vec<&Read> = events.iter().collect();
    sorted.sort_by_key(|e| (e.partition, e.offset));
    for e in sorted {
        if let Some((offset, vsn)) = last.get(&e.partition) {
            assert!(
                e.vsn > *vsn,
                "{topic}[{}]: VSN {} at offset {} is not above VSN {} at offset {}",
                e.partition,
                e.vsn,
                e.offset,
                vsn,
                offset
            );
        }
        last.insert(e.partition, (e.offset, e.vsn));
    }
}

/// Applies events in VSN order (the stream's order) to a map of key -> row.
/// Events with the same VSN must be the same event (a duplicate from a restart).
pub fn rebuild(events: &[Read]) -> BTreeMap<String, Vec<Datum>> {
    let mut sorted: Vec<&Read> = events.iter().collect();
    sorted.sort_by_key(|e| (e.vsn, e.partition, e.offset));
    let mut rows = BTreeMap::new();
    for e in sorted {
        let key = format!("{:?}", e.key);
        match e.op {
            Op::Read | Op::Create | Op::Update => {
                rows.insert(key, e.after.clone().unwrap_or_default());
            }
            Op::Delete => {
                rows.remove(&key);
            }
        }
    }
    rows
}

/// The table's current contents, key -> row, values as the exporter produces them.
pub async fn source_rows(
    client: &Client,
    table: &str,
) -> Result<(TableSchema, BTreeMap<String, Vec<Datum>>)> {
    let types = TypeCatalog::load(client).await?;
    let schema = load_table(
        client,
        &types,
        &TableName {
            schema: "public".into(),
            name: table.into(),
        },
    )
    .await?;
    let cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let messages = client
        .simple_query(&format!(
            "SELECT {} FROM public.\"{table}\"",
            cols.join(", ")
        ))
        .await?;
    let mut rows = BTreeMap::new();
    for m in messages {
        let SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let mut values = Vec::with_capacity(schema.columns.len());
        for (i, c) in schema.columns.iter().enumerate() {
            values.push(match row.get(i) {
                None => Datum::Null,
                Some(t) => parse_text(&c.kind, t)?,
            });
        }
        let key: Vec<Datum> = schema
            .primary_key
            .iter()
            .map(|&i| values[i].clone())
            .collect();
        rows.insert(format!("{key:?}"), values);
    }
    Ok((schema, rows))
}

/// Compares rebuilt contents with the source, with a readable failure.
pub fn assert_same(
    table: &str,
    source: &BTreeMap<String, Vec<Datum>>,
    rebuilt: &BTreeMap<String, Vec<Datum>>,
) {
    let missing: Vec<&String> = source
        .keys()
        .filter(|k| !rebuilt.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<&String> = rebuilt
        .keys()
        .filter(|k| !source.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<&String> = source
        .iter()
        .filter(|(k, v)| rebuilt.get(*k).is_some_and(|r| r != *v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "table {table}: {} source rows, {} rebuilt; missing {missing:?}, extra {extra:?}, different {differ:?}",
        source.len(),
        rebuilt.len()
    );
}
