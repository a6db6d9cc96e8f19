//! What the importer's integration tests share: one test's migration (`Fixture`:
//! databases, topic, registry, producer and the expected state), synthetic streams made
//! with the shared codec's `TableEncoder` (snapshot rows, then inserts, updates and
//! deletes, VSNs increasing, partition chosen from the key), in-process importers, and
//! the row-by-row and count checks every test ends with.
//!
//! Fixtures run one apply worker (`importer.workers = 1`) unless a test asks for more.

#![allow(dead_code)] // each test file uses a part of it
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_shared::catalog::{self, TableName, TableSchema, TypeCatalog};
use ferry_shared::codec::TableEncoder;
use ferry_shared::config::Config;
use ferry_shared::envelope::Op;
use ferry_shared::registry::RegistryClient;
use ferry_shared::shutdown::{self, ShutdownTrigger};
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_shared::value::Datum;
use ferry_testkit::{free_port, kafka, unique_name, wait_until, Stack};
use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(120);

/// Expected contents of a table `(id bigint primary key, <text columns>)`.
pub type Rows = BTreeMap<i64, Vec<Option<String>>>;

/// One test's migration: databases, topic, registry, producer and the expected state.
pub struct Fixture {
    pub id: String,
    pub source_db: String,
    pub target_db: String,
    pub registry_url: String,
    pub config_toml: String,
    pub topic: String,
    pub partitions: i32,
    pub codec: TableEncoder,
    pub producer: FutureProducer,
    pub next_vsn: u64,
    /// Produced events, for re-producing duplicates: (partition, key, value).
    pub produced: Vec<(i32, Vec<u8>, Vec<u8>)>,
    pub expected: Rows,
    pub counts: [i64; 4],
    pub columns: usize,
}

impl Fixture {
    /// `source_ddl` creates table `t` on the source (whose schema the stream carries);
    /// `target_ddl` creates it on the target.
    pub async fn new(
        prefix: &str,
        source_ddl: &str,
        target_ddl: &str,
        partitions: i32,
        batch_rows: u32,
    ) -> Result<Fixture> {
        let stack = Stack::get();
        let id = unique_name(prefix);
        let source_db = stack.source.create_database(prefix).await?;
        let target_db = stack.target.create_database(prefix).await?;
        let source = stack.source.connect(&source_db).await?;
        source.batch_execute(source_ddl).await?;
        stack
            .target
            .connect(&target_db)
            .await?
            .batch_execute(target_ddl)
            .await?;
        let table = public_table(&source, "t").await?;
        let registry_url = ferry_testkit::serve_registry(None).await?;
        let topics = Topics::new(format!("ferry.{id}"));
        let topic = topics.table(Stream::Source, "public", "t");
        kafka::create_topic(&stack.kafka_bootstrap, &topic, partitions, false).await?;
        kafka::create_topic(&stack.kafka_bootstrap, &topics.status(), 1, true).await?;
        let codec = TableEncoder::new(
            &RegistryClient::new(&registry_url, None)?,
            table.clone(),
            topic.clone(),
            0,
            partitions,
            "src".into(),
        )
        .await?;
        let mut config_toml = stack.config_toml(
            &id,
            &source_db,
            &target_db,
            &source_db,
            &format!("127.0.0.1:{}", free_port()),
        );
        config_toml.push_str(&format!(
            "\n[schema_registry]\nurl = \"{registry_url}\"\n\n[importer]\nbatch_rows = {batch_rows}\nbatch_max_ms = 50\nworkers = 1\n\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\"max.poll.interval.ms\" = \"10000\"\n"
        ));
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &stack.kafka_bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        Ok(Fixture {
            id,
            source_db,
            target_db,
            registry_url,
            config_toml,
            topic,
            partitions,
            codec,
            producer,
            next_vsn: 1,
            produced: Vec::new(),
            expected: Rows::new(),
            counts: [0; 4],
            columns: table.columns.len() - 1,
        })
    }

    /// Runs `n` apply workers per importer.
    pub fn with_workers(mut self, n: u32) -> Fixture {
        self.config_toml = self
            .config_toml
            .replace("workers = 1\n", &format!("workers = {n}\n"));
        self
    }

    pub fn config(&self) -> Config {
        Config::from_toml_str(&self.config_toml).unwrap()
    }

    pub fn group(&self) -> String {
        Topics::new(format!("ferry.{}", self.id)).import_group(Destination::Target)
    }

    pub fn row(id: i64, values: &[Option<String>]) -> Vec<Datum> {
        let mut row = vec![Datum::Long(id)];
        // Odd columns (c2, c4, ..) are integers, the others text.
        row.extend(values.iter().enumerate().map(|(i, v)| match v {
            None => Datum::Null,
            Some(v) if i % 2 == 1 => Datum::Int(v.parse().unwrap()),
            Some(v) => Datum::String(v.clone()),
        }));
        row
    }

    /// Produces one event (in VSN order) and updates the expected state.
    pub async fn event(
        &mut self,
        op: Op,
        id: i64,
        values: Option<Vec<Option<String>>>,
    ) -> Result<()> {
        let before = self.expected.get(&id).map(|v| Self::row(id, v));
        let after = values.as_ref().map(|v| Self::row(id, v));
        let event = ferry_testkit::events::on_t(op, id, self.next_vsn, before, after);
        self.next_vsn += 1;
        let (key, value) = self.codec.encode_event(&event)?;
        let partition = (id.rem_euclid(i64::from(self.partitions))) as i32;
        self.send(partition, &key, &value).await?;
        self.produced.push((partition, key, value));
        match op {
            Op::Read => self.counts[0] += 1,
            Op::Create => self.counts[1] += 1,
            Op::Update => self.counts[2] += 1,
            Op::Delete => self.counts[3] += 1,
        }
        match values {
            Some(v) => {
                self.expected.insert(id, v);
            }
            None => {
                self.expected.remove(&id);
            }
        }
        Ok(())
    }

    pub async fn send(&self, partition: i32, key: &[u8], value: &[u8]) -> Result<()> {
        self.producer
            .send(
                FutureRecord::to(&self.topic)
                    .partition(partition)
                    .key(key)
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    pub fn random_values(&self, rng: &mut impl Rng) -> Vec<Option<String>> {
        (0..self.columns)
            .map(|c| {
                if rng.random_bool(0.1) {
                    None
                } else {
                    Some(match c % 2 {
                        0 => format!("v{}\t\\ '\"\n{}", rng.random_range(0..1000), "é"),
                        _ => rng.random_range(-1000..1000).to_string(),
                    })
                }
            })
            .collect()
    }

    /// `n` snapshot rows with ids `1..=n`.
    pub async fn snapshot(&mut self, n: i64) -> Result<()> {
        let mut rng = rand::rng();
        for id in 1..=n {
            let v = self.random_values(&mut rng);
            self.event(Op::Read, id, Some(v)).await?;
        }
        Ok(())
    }

    /// `n` random inserts, updates and deletes over ids up to `max_id`.
    pub async fn changes(&mut self, n: usize, max_id: i64) -> Result<()> {
        let mut rng = rand::rng();
        for _ in 0..n {
            let id = rng.random_range(1..=max_id);
            let v = self.random_values(&mut rng);
            if self.expected.contains_key(&id) {
                if rng.random_bool(0.3) {
                    self.event(Op::Delete, id, None).await?;
                } else {
                    self.event(Op::Update, id, Some(v)).await?;
                }
            } else {
                self.event(Op::Create, id, Some(v)).await?;
            }
        }
        Ok(())
    }

    /// Produces again `n` events chosen at random from those produced (the same bytes,
    /// so the same VSNs): the importer must skip them.
    pub async fn duplicates(&mut self, n: usize) -> Result<()> {
        let mut rng = rand::rng();
        for _ in 0..n {
            let i = rng.random_range(0..self.produced.len());
            let (p, k, v) = self.produced[i].clone();
            self.send(p, &k, &v).await?;
        }
        Ok(())
    }

    pub fn total(&self) -> i64 {
        self.counts.iter().sum()
    }

    pub async fn target(&self) -> Result<tokio_postgres::Client> {
        Stack::get().target.connect(&self.target_db).await
    }

    pub async fn stored_counts(&self) -> Result<[i64; 4]> {
        let rows = self
            .target()
            .await?
            .query(
                "SELECT snapshot_rows, inserts, updates, deletes FROM ferry_metadata.table_counts \
                 WHERE consumer_group = $1 AND schema_name = 'public' AND table_name = 't'",
                &[&self.group()],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) => [r.get(0), r.get(1), r.get(2), r.get(3)],
            None => [0; 4],
        })
    }

    /// Waits until every produced event is counted as applied, then compares.
    pub async fn wait_caught_up(&self) -> Result<()> {
        let want = self.total();
        wait_until("the importer to catch up", WAIT, || async {
            let c = self.stored_counts().await?;
            Ok((c.iter().sum::<i64>() >= want).then_some(()))
        })
        .await?;
        self.assert_equal().await
    }

    pub async fn assert_equal(&self) -> Result<()> {
        assert_eq!(
            self.stored_counts().await?,
            self.counts,
            "counts in ferry_metadata"
        );
        let cols: Vec<String> = (0..self.columns)
            .map(|i| format!("c{}::text", i + 1))
            .collect();
        let rows = self
            .target()
            .await?
            .query(
                &format!("SELECT id, {} FROM t ORDER BY id", cols.join(", ")),
                &[],
            )
            .await?;
        let mut actual = Rows::new();
        for r in rows {
            actual.insert(
                r.get(0),
                (1..=self.columns)
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect(),
            );
        }
        if actual != self.expected {
            let missing: Vec<_> = self
                .expected
                .keys()
                .filter(|k| !actual.contains_key(k))
                .take(10)
                .collect();
            let extra: Vec<_> = actual
                .keys()
                .filter(|k| !self.expected.contains_key(k))
                .take(10)
                .collect();
            let differ: Vec<_> = actual
                .iter()
                .filter(|(k, v)| self.expected.get(k).is_some_and(|e| e != *v))
                .map(|(k, _)| k)
                .take(10)
                .collect();
            panic!(
                "destination differs: {} rows expected, {} present; missing {missing:?}, extra {extra:?}, different {differ:?}",
                self.expected.len(),
                actual.len()
            );
        }
        Ok(())
    }

    pub fn start(&self) -> Importer {
        let (trigger, shutdown) = shutdown::channel();
        let config = self.config();
        Importer {
            trigger,
            task: tokio::spawn(ferry_importer::run_for(
                Destination::Target,
                config,
                shutdown,
            )),
        }
    }
}

pub struct Importer {
    pub trigger: ShutdownTrigger,
    pub task: JoinHandle<Result<(), ferry_importer::Error>>,
}

impl Importer {
    pub async fn stop(self) -> Result<()> {
        self.trigger.trigger();
        tokio::time::timeout(WAIT, self.task)
            .await??
            .context("importer failed")?;
        Ok(())
    }

    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

pub const DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, c1 text, c2 integer, c3 text)";

/// The catalog's view of table `public.<name>` on `source`.
pub async fn public_table(source: &tokio_postgres::Client, name: &str) -> Result<TableSchema> {
    let types = TypeCatalog::load(source).await?;
    Ok(catalog::load_table(
        source,
        &types,
        &TableName {
            schema: "public".into(),
            name: name.into(),
        },
    )
    .await?)
}
