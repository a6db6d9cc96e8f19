//! The importer against real PostgreSQL and the local broker: synthetic streams made
//! with the shared codec's `TableEncoder` (snapshot rows, then inserts, updates and deletes, VSNs increasing,
//! partition chosen from the key), applied by in-process importers (`run_for` in
//! spawned tasks) or the `ferry-importer` binary killed with SIGKILL. Every test
//! compares the destination table row by row with the expected contents and checks
//! the counts in `ferry_metadata` exactly.
//!
//! Fixtures run one apply worker (`importer.workers = 1`) unless a test asks for more;
//! the `four_workers_*` tests repeat the exactly-once properties with four workers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_shared::catalog::{self, TableName, TypeCatalog};
use ferry_shared::codec::TableEncoder;
use ferry_shared::config::Config;
use ferry_shared::envelope::{ChangeEvent, Op, SourceInfo};
use ferry_shared::position::Vsn;
use ferry_shared::registry::RegistryClient;
use ferry_shared::shutdown::{self, ShutdownTrigger};
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_shared::value::Datum;
use ferry_testkit::{free_port, kafka, unique_name, wait_until, Stack};
use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(120);

/// Expected contents of a table `(id bigint primary key, <text columns>)`.
type Rows = BTreeMap<i64, Vec<Option<String>>>;

/// One test's migration: databases, topic, registry, producer and the expected state.
struct Fixture {
    id: String,
    source_db: String,
    target_db: String,
    registry_url: String,
    config_toml: String,
    topic: String,
    partitions: i32,
    codec: TableEncoder,
    producer: FutureProducer,
    next_vsn: u64,
    /// Produced events, for re-producing duplicates: (partition, key, value).
    produced: Vec<(i32, Vec<u8>, Vec<u8>)>,
    expected: Rows,
    counts: [i64; 4],
    columns: usize,
}

impl Fixture {
    /// `source_ddl` creates table `t` on the source (whose schema the stream carries);
    /// `target_ddl` creates it on the target.
    async fn new(
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
        let types = TypeCatalog::load(&source).await?;
        let table = catalog::load_table(
            &source,
            &types,
            &TableName {
                schema: "public".into(),
                name: "t".into(),
            },
        )
        .await?;
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
    fn with_workers(mut self, n: u32) -> Fixture {
        self.config_toml = self
            .config_toml
            .replace("workers = 1\n", &format!("workers = {n}\n"));
        self
    }

    fn config(&self) -> Config {
        Config::from_toml_str(&self.config_toml).unwrap()
    }

    fn group(&self) -> String {
        Topics::new(format!("ferry.{}", self.id)).import_group(Destination::Target)
    }

    fn row(id: i64, values: &[Option<String>]) -> Vec<Datum> {
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
    async fn event(&mut self, op: Op, id: i64, values: Option<Vec<Option<String>>>) -> Result<()> {
        let before = self.expected.get(&id).map(|v| Self::row(id, v));
        let after = values.as_ref().map(|v| Self::row(id, v));
        let event = ChangeEvent {
            key: vec![Datum::Long(id)],
            before: if op == Op::Update || op == Op::Delete {
                before
            } else {
                None
            },
            after,
            op,
            ts_ms: 0,
            vsn: Vsn(self.next_vsn),
            source: SourceInfo {
                db: "src".into(),
                schema: "public".into(),
                table: "t".into(),
                snapshot: op == Op::Read,
                lsn_or_scn: "0/0".into(),
                txid: None,
                commit_ts_ms: 0,
            },
        };
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

    async fn send(&self, partition: i32, key: &[u8], value: &[u8]) -> Result<()> {
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

    fn random_values(&self, rng: &mut impl Rng) -> Vec<Option<String>> {
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
    async fn snapshot(&mut self, n: i64) -> Result<()> {
        let mut rng = rand::rng();
        for id in 1..=n {
            let v = self.random_values(&mut rng);
            self.event(Op::Read, id, Some(v)).await?;
        }
        Ok(())
    }

    /// `n` random inserts, updates and deletes over ids up to `max_id`.
    async fn changes(&mut self, n: usize, max_id: i64) -> Result<()> {
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
    async fn duplicates(&mut self, n: usize) -> Result<()> {
        let mut rng = rand::rng();
        for _ in 0..n {
            let i = rng.random_range(0..self.produced.len());
            let (p, k, v) = self.produced[i].clone();
            self.send(p, &k, &v).await?;
        }
        Ok(())
    }

    fn total(&self) -> i64 {
        self.counts.iter().sum()
    }

    async fn target(&self) -> Result<tokio_postgres::Client> {
        Stack::get().target.connect(&self.target_db).await
    }

    async fn stored_counts(&self) -> Result<[i64; 4]> {
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
    async fn wait_caught_up(&self) -> Result<()> {
        let want = self.total();
        wait_until("the importer to catch up", WAIT, || async {
            let c = self.stored_counts().await?;
            Ok((c.iter().sum::<i64>() >= want).then_some(()))
        })
        .await?;
        self.assert_equal().await
    }

    async fn assert_equal(&self) -> Result<()> {
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

    fn start(&self) -> Importer {
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

struct Importer {
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), ferry_importer::Error>>,
}

impl Importer {
    async fn stop(self) -> Result<()> {
        self.trigger.trigger();
        tokio::time::timeout(WAIT, self.task)
            .await??
            .context("importer failed")?;
        Ok(())
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

const DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, c1 text, c2 integer, c3 text)";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_then_changes_apply_exactly_once_and_duplicates_are_skipped() -> Result<()> {
    let mut f = Fixture::new("imp_basic", DDL, DDL, 4, 200).await?;
    f.snapshot(500).await?;
    f.changes(1500, 700).await?;
    let importer = f.start();
    f.wait_caught_up().await?;
    // Already-applied events delivered again, then more changes.
    f.duplicates(200).await?;
    f.changes(300, 700).await?;
    f.wait_caught_up().await?;
    importer.stop().await?;
    // A restart reads nothing twice.
    f.duplicates(50).await?;
    let importer = f.start();
    f.changes(100, 700).await?;
    f.wait_caught_up().await?;
    // Heartbeats in _status carry the group's totals, positions and what remains.
    let status = Topics::new(format!("ferry.{}", f.id)).status();
    let want = f.total();
    wait_until("a heartbeat of the caught-up importer", WAIT, || async {
        let records = kafka::consume_all(&Stack::get().kafka_bootstrap, &status).await?;
        Ok(records.iter().rev().find_map(|(_, _, key, value)| {
            let key = String::from_utf8(key.clone()?).ok()?;
            let beat: ferry_importer::ImporterHeartbeat =
                serde_json::from_slice(value.as_deref()?).ok()?;
            (key.starts_with("importer.target.")
                && beat.total_imported == want
                && beat.remaining == 0
                && beat.partitions_held == 4
                && beat.positions.len() == 4)
                .then_some(())
        }))
    })
    .await?;
    importer.stop().await?;
    // Positions stored in the destination match the topic's end.
    let target = f.target().await?;
    let stored: i64 = target
        .query_one(
            "SELECT sum(next_offset)::bigint FROM ferry_metadata.positions WHERE consumer_group = $1",
            &[&f.group()],
        )
        .await?
        .get(0);
    assert_eq!(stored as usize, f.produced.len() + 250);
    Ok(())
}

/// Four workers share eight partitions: snapshot, changes, redelivered events and a
/// restart end equal, with exact counts and positions at the topic's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_apply_many_partitions_exactly_once() -> Result<()> {
    let mut f = Fixture::new("imp_workers", DDL, DDL, 8, 200)
        .await?
        .with_workers(4);
    f.snapshot(2000).await?;
    f.changes(3000, 2500).await?;
    let importer = f.start();
    // One connection per worker, besides the importer's own.
    let admin = Stack::get().target.connect("postgres").await?;
    wait_until("four apply connections", WAIT, || async {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'ferry'",
                &[&f.target_db],
            )
            .await?
            .get(0);
        Ok((n >= 5).then_some(()))
    })
    .await?;
    f.duplicates(300).await?;
    f.changes(1000, 2500).await?;
    f.wait_caught_up().await?;
    importer.stop().await?;
    f.duplicates(100).await?;
    let importer = f.start();
    f.changes(1000, 2500).await?;
    f.wait_caught_up().await?;
    importer.stop().await?;
    let target = f.target().await?;
    let stored: i64 = target
        .query_one(
            "SELECT sum(next_offset)::bigint FROM ferry_metadata.positions WHERE consumer_group = $1",
            &[&f.group()],
        )
        .await?
        .get(0);
    assert_eq!(stored as usize, f.produced.len() + 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_random_moments_ends_equal_with_exact_counts() -> Result<()> {
    killed_at_random_moments(Fixture::new("imp_kill", DDL, DDL, 3, 50).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_killed_at_random_moments_end_equal_with_exact_counts() -> Result<()> {
    let f = Fixture::new("imp_kill4", DDL, DDL, 6, 50).await?;
    killed_at_random_moments(f.with_workers(4)).await
}

async fn killed_at_random_moments(mut f: Fixture) -> Result<()> {
    f.snapshot(300).await?;
    let mut rng = rand::rng();
    for round in 0..10 {
        let importer = f.start();
        f.changes(150, 500).await?;
        if round % 3 == 0 {
            f.duplicates(30).await?;
        }
        let ms = rng.random_range(0..1500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        importer.kill().await;
    }
    let importer = f.start();
    f.wait_caught_up().await?;
    importer.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_partitions_through_kills_and_joins() -> Result<()> {
    replicas_through_kills_and_joins(Fixture::new("imp_replicas", DDL, DDL, 6, 100).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_replicas_share_partitions_through_kills_and_joins() -> Result<()> {
    let f = Fixture::new("imp_replicas4", DDL, DDL, 8, 100).await?;
    replicas_through_kills_and_joins(f.with_workers(4)).await
}

async fn replicas_through_kills_and_joins(mut f: Fixture) -> Result<()> {
    f.snapshot(400).await?;
    let a = f.start();
    let b = f.start();
    let c = f.start();
    f.changes(800, 600).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.kill().await;
    f.changes(800, 600).await?;
    let d = f.start();
    f.changes(400, 600).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = f.start();
    f.duplicates(100).await?;
    f.changes(400, 600).await?;
    f.wait_caught_up().await?;
    for i in [a, b, c, d] {
        i.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_column_stops_with_table_column_and_vsn_then_resumes() -> Result<()> {
    let mut f = Fixture::new(
        "imp_missing",
        DDL,
        "CREATE TABLE t (id bigint PRIMARY KEY, c1 text, c2 integer)",
        2,
        100,
    )
    .await?;
    f.snapshot(50).await?;
    f.changes(100, 80).await?;
    let importer = f.start();
    let err = tokio::time::timeout(WAIT, importer.task)
        .await??
        .expect_err("the importer must stop");
    let message = err.to_string();
    assert!(
        message.contains("table \"public.t\" on the target has no column \"c3\" (event vsn "),
        "{message}"
    );
    assert!(message.contains("add the column"), "{message}");
    assert!(message.contains("resumes where it stopped"), "{message}");
    f.target()
        .await?
        .batch_execute("ALTER TABLE t ADD COLUMN c3 text")
        .await?;
    let importer = f.start();
    f.changes(100, 80).await?;
    f.wait_caught_up().await?;
    importer.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_disable_triggers_is_refused_at_start_with_the_fix() -> Result<()> {
    let f = Fixture::new("imp_role", DDL, DDL, 1, 100).await?;
    let role = unique_name("plain");
    f.target()
        .await?
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT ALL ON SCHEMA public TO {role}"
        ))
        .await?;
    let toml = f.config_toml.replacen(
        &format!("user = \"{}\"", Stack::get().target.user),
        "user = \"__X__\"",
        2,
    );
    // Only the [target] section (the second database) gets the plain role.
    let mut parts = toml.split("[target]");
    let head = parts
        .next()
        .unwrap_or_default()
        .replace("__X__", &Stack::get().source.user);
    let tail = parts
        .next()
        .unwrap_or_default()
        .replacen("__X__", &role, 1)
        .replacen(
            &format!("password = \"{}\"", Stack::get().target.password),
            "password = \"pw\"",
            1,
        )
        .replace("__X__", &Stack::get().source_replica.user);
    let config = Config::from_toml_str(&format!("{head}[target]{tail}"))?;
    let err = ferry_importer::run_for(Destination::Target, config, shutdown::Shutdown::never())
        .await
        .expect_err("must refuse");
    let message = err.to_string();
    assert!(
        message.contains("may not set session_replication_role"),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "GRANT SET ON PARAMETER session_replication_role TO {role}"
        )),
        "{message}"
    );

    // The same target as a YugabyteDB (PostgreSQL standing in), with a table that has
    // no primary key besides: its preflight names both problems at once, each with its
    // fix, before anything is created there.
    f.target()
        .await?
        .batch_execute("CREATE TABLE keyless (v text)")
        .await?;
    let config = Config::from_toml_str(&format!("{head}[target]\nengine = \"yugabytedb\"{tail}"))?;
    let err = ferry_importer::run_for(Destination::Target, config, shutdown::Shutdown::never())
        .await
        .expect_err("must refuse");
    let message = err.to_string();
    println!("{message}");
    for expected in [
        "the target (engine yugabytedb) is not ready (fix every problem below".to_owned(),
        format!("role {role} on the target may not set session_replication_role"),
        format!(
            "run GRANT SET ON PARAMETER session_replication_role TO \"{role}\", or run GRANT yb_superuser TO \"{role}\""
        ),
        "table public.keyless on the target has no primary key".to_owned(),
        "ALTER TABLE \"public\".\"keyless\" ADD PRIMARY KEY".to_owned(),
    ] {
        assert!(message.contains(&expected), "{expected:?} missing: {message}");
    }
    let metadata: i64 = f
        .target()
        .await?
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry_metadata'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        metadata, 0,
        "nothing is created before the preflight passes"
    );
    Ok(())
}

// ---- unique keys besides the primary key (DESIGN.md §4a) ----
//
// The stream of such a table has one partition (its order is total); the importer
// applies its events in exact order, so each case below lands in one batch and would
// hit a unique violation if the importer collapsed or reordered them.

const UNIQUE_DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, c1 text UNIQUE, c2 integer)";

fn v(email: Option<&str>, n: i32) -> Option<Vec<Option<String>>> {
    Some(vec![email.map(str::to_owned), Some(n.to_string())])
}

async fn unique_case(
    prefix: &str,
    snapshot: &[(i64, Option<&str>)],
    steps: &[(Op, i64, Option<&str>)],
) -> Result<()> {
    let mut f = Fixture::new(prefix, UNIQUE_DDL, UNIQUE_DDL, 1, 10_000).await?;
    for (id, email) in snapshot {
        f.event(Op::Read, *id, v(*email, 0)).await?;
    }
    for (i, (op, id, email)) in steps.iter().enumerate() {
        let values = if *op == Op::Delete {
            None
        } else {
            v(*email, i as i32 + 1)
        };
        f.event(*op, *id, values).await?;
    }
    let importer = f.start();
    f.wait_caught_up().await?;
    importer.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_delete_then_insert_reusing_the_value() -> Result<()> {
    unique_case(
        "imp_u_del_ins",
        &[(1, Some("x")), (2, Some("y"))],
        &[
            (Op::Delete, 1, None),
            (Op::Create, 3, Some("x")),
            (Op::Update, 3, Some("x")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_update_then_insert_reusing_the_old_value() -> Result<()> {
    unique_case(
        "imp_u_upd_ins",
        &[(1, Some("x"))],
        &[
            (Op::Update, 1, Some("y")),
            (Op::Create, 2, Some("x")),
            (Op::Update, 1, Some("z")),
            (Op::Create, 3, Some("y")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_delete_then_update_taking_the_value() -> Result<()> {
    unique_case(
        "imp_u_del_upd",
        &[(1, Some("x")), (2, Some("y"))],
        &[
            (Op::Delete, 1, None),
            (Op::Update, 2, Some("x")),
            (Op::Create, 1, Some("y")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_update_then_update_swapping_values() -> Result<()> {
    unique_case(
        "imp_u_swap",
        &[(1, Some("x")), (2, Some("y")), (3, Some("z"))],
        &[
            (Op::Update, 1, Some("tmp")),
            (Op::Update, 2, Some("x")),
            (Op::Update, 1, Some("y")),
            // a three-way rotation in one run of updates
            (Op::Update, 3, Some("tmp")),
            (Op::Update, 1, Some("z")),
            (Op::Update, 3, Some("y")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_null_values_coexist_and_move() -> Result<()> {
    unique_case(
        "imp_u_null",
        &[(1, None), (2, None), (3, Some("x"))],
        &[
            (Op::Create, 4, None),
            (Op::Update, 3, None),
            (Op::Update, 1, Some("x")),
            (Op::Delete, 2, None),
            (Op::Create, 2, None),
            (Op::Update, 4, Some("w")),
        ],
    )
    .await
}

// ---- the binary, killed with SIGKILL ----

/// Runs `ferry-importer` processes on a fixture's configuration, logging to one file.
struct Binary {
    _dir: tempfile::TempDir,
    config_path: std::path::PathBuf,
    log_path: std::path::PathBuf,
}

impl Binary {
    fn new(f: &Fixture) -> Result<Binary> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("ferry.toml");
        let mut toml = f.config_toml.clone();
        if let Ok(d) = std::env::var("IMPORTER_TEST_KAFKA_DEBUG") {
            toml.push_str(&format!("\"debug\" = \"{d}\"\n"));
        }
        std::fs::write(&config_path, toml)?;
        let log_path = match std::env::var("IMPORTER_TEST_LOG") {
            Ok(p) => std::path::PathBuf::from(p),
            Err(_) => dir.path().join("importer.log"),
        };
        Ok(Binary {
            _dir: dir,
            config_path,
            log_path,
        })
    }

    /// Starts one replica, a dynamic member of the group (no static membership): a
    /// killed replica's partitions move only when the broker evicts it after the
    /// importer's session timeout. `instance` goes into its environment
    /// (`IMPORTER_TEST_INSTANCE`) to tell the processes apart.
    fn spawn(&self, instance: &str) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        Ok(Child(
            std::process::Command::new(env!("CARGO_BIN_EXE_ferry-importer"))
                .arg("--config")
                .arg(&self.config_path)
                .env("IMPORTER_TEST_INSTANCE", instance)
                .env(
                    "FERRY_LOG",
                    std::env::var("IMPORTER_TEST_FERRY_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()?,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_killed_with_sigkill_at_random_moments_ends_equal() -> Result<()> {
    sigkill_at_random_moments(Fixture::new("imp_sigkill", DDL, DDL, 3, 100).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_the_binary_killed_with_sigkill_at_random_moments_ends_equal() -> Result<()> {
    let f = Fixture::new("imp_sigkill4", DDL, DDL, 6, 100).await?;
    sigkill_at_random_moments(f.with_workers(4)).await
}

async fn sigkill_at_random_moments(mut f: Fixture) -> Result<()> {
    let bin = Binary::new(&f)?;
    f.snapshot(400).await?;
    let mut rng = rand::rng();
    let rounds: usize = std::env::var("IMPORTER_TEST_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    for _ in 0..rounds {
        let mut child = bin.spawn("importer-0")?;
        f.changes(200, 600).await?;
        f.duplicates(20).await?;
        let ms = rng.random_range(0..2500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.sigkill()?;
    }
    let _child = bin.spawn("importer-0")?;
    f.wait_caught_up().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_binary_replicas_one_sigkilled_one_added_then_restarted() -> Result<()> {
    let mut f = Fixture::new("imp_bin_replicas", DDL, DDL, 6, 100).await?;
    let bin = Binary::new(&f)?;
    f.snapshot(600).await?;
    let mut r0 = bin.spawn("r0")?;
    let _r1 = bin.spawn("r1")?;
    let _r2 = bin.spawn("r2")?;
    f.changes(1000, 900).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    r0.sigkill()?;
    f.changes(1000, 900).await?;
    let _r3 = bin.spawn("r3")?;
    f.duplicates(100).await?;
    f.changes(500, 900).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _r0 = bin.spawn("r0")?;
    f.changes(500, 900).await?;
    f.wait_caught_up().await
}

/// Two replicas share the group; one is killed with SIGKILL and not restarted. The
/// broker evicts it after the importer's session timeout, its partitions move to the
/// survivor, and everything written after the kill is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_with_sigkill_is_evicted_and_the_survivor_takes_its_partitions(
) -> Result<()> {
    let mut f = Fixture::new("imp_evict", DDL, DDL, 4, 100).await?;
    let bin = Binary::new(&f)?;
    f.snapshot(400).await?;
    let mut r0 = bin.spawn("r0")?;
    let _r1 = bin.spawn("r1")?;
    f.wait_caught_up().await?;
    // Both members hold partitions before the kill.
    let group = f.group();
    let bootstrap = Stack::get().kafka_bootstrap.clone();
    wait_until("both replicas to hold partitions", WAIT, || {
        let (bootstrap, group) = (bootstrap.clone(), group.clone());
        async move {
            let members = group_members(&bootstrap, &group).await?;
            Ok((members.len() == 2 && members.iter().all(|m| *m > 0)).then_some(()))
        }
    })
    .await?;

    r0.sigkill()?;
    let killed = std::time::Instant::now();
    f.changes(800, 900).await?;
    f.duplicates(50).await?;
    f.wait_caught_up().await?;
    let moved = killed.elapsed();
    let members = group_members(&bootstrap, &group).await?;
    assert_eq!(members, vec![4], "the survivor holds every partition");
    // Well under librdkafka's default session timeout (45 s): the importer's own 10 s.
    assert!(
        moved < Duration::from_secs(30),
        "the killed replica's partitions took {moved:?} to be applied by the survivor"
    );
    eprintln!("partitions of the killed replica applied by the survivor {moved:?} after the kill");
    Ok(())
}

/// The partition count each member of consumer group `group` holds, as the broker
/// has it (empty while the group rebalances).
async fn group_members(bootstrap: &str, group: &str) -> Result<Vec<usize>> {
    let (bootstrap, group) = (bootstrap.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || -> Result<Vec<usize>> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()?;
        let list = consumer.fetch_group_list(Some(&group), Duration::from_secs(10))?;
        let mut out = Vec::new();
        for g in list.groups() {
            if g.name() != group || g.state() != "Stable" {
                continue;
            }
            for m in g.members() {
                out.push(assigned_partitions(m.assignment().unwrap_or_default()));
            }
        }
        out.sort_unstable();
        Ok(out)
    })
    .await?
}

/// The number of partitions in a consumer protocol `Assignment` (version, then an array
/// of (topic, array of partition)).
fn assigned_partitions(bytes: &[u8]) -> usize {
    let i32_at = |at: usize| -> Option<i32> {
        bytes
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut at = 2; // version (int16)
    let Some(topics) = i32_at(at) else { return 0 };
    at += 4;
    let mut n = 0usize;
    for _ in 0..topics.max(0) {
        let Some(len) = bytes
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
        else {
            return n;
        };
        at += 2 + usize::try_from(len.max(0)).unwrap_or(0);
        let Some(parts) = i32_at(at) else { return n };
        at += 4 + 4 * usize::try_from(parts.max(0)).unwrap_or(0);
        n += usize::try_from(parts.max(0)).unwrap_or(0);
    }
    n
}

/// Kills the process when dropped, so that a failing test leaves nothing running.
struct Child(std::process::Child);

impl Child {
    fn sigkill(&mut self) -> Result<()> {
        self.0.kill()?; // SIGKILL
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_topic_created_while_running_is_picked_up() -> Result<()> {
    let mut f = Fixture::new("imp_newtopic", DDL, DDL, 2, 100).await?;
    f.snapshot(50).await?;
    let importer = f.start();
    f.wait_caught_up().await?;

    // A second table appears: its topic is created after the importer subscribed.
    let stack = Stack::get();
    let ddl = "CREATE TABLE t2 (id bigint PRIMARY KEY, name text)";
    let source = stack.source.connect(&f.source_db).await?;
    source.batch_execute(ddl).await?;
    f.target().await?.batch_execute(ddl).await?;
    let types = TypeCatalog::load(&source).await?;
    let table = catalog::load_table(
        &source,
        &types,
        &TableName {
            schema: "public".into(),
            name: "t2".into(),
        },
    )
    .await?;
    let topic = Topics::new(format!("ferry.{}", f.id)).table(Stream::Source, "public", "t2");
    kafka::create_topic(&stack.kafka_bootstrap, &topic, 1, false).await?;
    let codec = TableEncoder::new(
        &RegistryClient::new(&f.registry_url, None)?,
        table,
        topic.clone(),
        0,
        1,
        "src".into(),
    )
    .await?;
    for id in 1..=20i64 {
        let event = ChangeEvent {
            key: vec![Datum::Long(id)],
            before: None,
            after: Some(vec![Datum::Long(id), Datum::String(format!("n{id}"))]),
            op: Op::Create,
            ts_ms: 0,
            vsn: Vsn(f.next_vsn),
            source: SourceInfo {
                db: "src".into(),
                schema: "public".into(),
                table: "t2".into(),
                snapshot: false,
                lsn_or_scn: "0/0".into(),
                txid: None,
                commit_ts_ms: 0,
            },
        };
        f.next_vsn += 1;
        let (key, value) = codec.encode_event(&event)?;
        f.producer
            .send(
                FutureRecord::to(&topic)
                    .partition(0)
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    f.changes(100, 80).await?;
    let target = f.target().await?;
    wait_until("rows of the new table", WAIT, || async {
        let n: i64 = target
            .query_one("SELECT count(*) FROM t2 WHERE name = 'n' || id", &[])
            .await?
            .get(0);
        Ok((n == 20).then_some(()))
    })
    .await?;
    let inserts: i64 = target
        .query_one(
            "SELECT inserts FROM ferry_metadata.table_counts \
             WHERE consumer_group = $1 AND table_name = 't2'",
            &[&f.group()],
        )
        .await?
        .get(0);
    assert_eq!(inserts, 20);
    f.wait_caught_up().await?;
    importer.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_destination_connections_are_retried_without_loss() -> Result<()> {
    let mut f = Fixture::new("imp_connloss", DDL, DDL, 3, 50).await?;
    f.snapshot(300).await?;
    let importer = f.start();
    let admin = Stack::get().target.connect("postgres").await?;
    for _ in 0..5 {
        f.changes(300, 500).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Every session of the importer ends (SQLSTATE 57P01, a transient error).
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'ferry' AND pid <> pg_backend_pid()",
                &[&f.target_db],
            )
            .await?;
    }
    f.wait_caught_up().await?;
    importer.stop().await?;
    Ok(())
}
