//! A manual measurement, not a test of correctness: snapshot rows of a narrow table
//! through the in-process importer, timed from start until `ferry_metadata` counts them
//! all. Ignored by default; run with
//!
//! ```text
//! IMPORTER_BENCH_ROWS=200000 IMPORTER_BENCH_WORKERS=4 \
//!   cargo test -p ferry-importer --release --test throughput -- --ignored --nocapture
//! ```
//!
//! It prints rows per second; it asserts only that every row arrived.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_coordinator::registry::{self, Registry};
use ferry_shared::catalog::{self, TableName, TypeCatalog};
use ferry_shared::config::Config;
use ferry_shared::envelope::{ChangeEvent, Op, SourceInfo};
use ferry_shared::position::Vsn;
use ferry_shared::registry::{RegistryClient, TableCodec};
use ferry_shared::shutdown;
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_shared::value::Datum;
use ferry_testkit::{free_port, kafka, unique_name, wait_until, Stack};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

const DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, a integer, b bigint, \
                   s character varying(16), ts timestamptz)";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run by hand"]
async fn narrow_snapshot_rows_per_second() -> Result<()> {
    let rows = env("IMPORTER_BENCH_ROWS", 200_000) as i64;
    let workers = env("IMPORTER_BENCH_WORKERS", 1);
    let partitions = env("IMPORTER_BENCH_PARTITIONS", 4) as i32;
    let stack = Stack::get();
    let id = unique_name("bench");
    let source_db = stack.source.create_database("imp_bench").await?;
    let target_db = stack.target.create_database("imp_bench").await?;
    let source = stack.source.connect(&source_db).await?;
    source.batch_execute(DDL).await?;
    let target = stack.target.connect(&target_db).await?;
    target.batch_execute(DDL).await?;
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

    let mut kafka_config = ClientConfig::new();
    kafka_config.set("bootstrap.servers", &stack.kafka_bootstrap);
    let registry = Arc::new(Registry::open(kafka_config, unique_name("schemas")).await?);
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, registry::router(registry)).await;
    });
    let registry_url = format!("http://{addr}");

    let topics = Topics::new(format!("ferry.{id}"));
    let topic = topics.table(Stream::Source, "public", "t");
    kafka::create_topic(&stack.kafka_bootstrap, &topic, partitions, false).await?;
    kafka::create_topic(&stack.kafka_bootstrap, &topics.status(), 1, true).await?;
    let codec =
        TableCodec::register(&RegistryClient::new(&registry_url, None)?, &topic, &table).await?;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let produce = Instant::now();
    let mut pending = Vec::with_capacity(rows as usize);
    for n in 1..=rows {
        let event = ChangeEvent {
            key: vec![Datum::Long(n)],
            before: None,
            after: Some(vec![
                Datum::Long(n),
                Datum::Int((n % 100_000) as i32),
                Datum::Long(n * 7_919),
                Datum::String(format!("name-{n}")),
                Datum::TimestampTz(1_700_000_000_000_000 + n * 1_000_003),
            ]),
            op: Op::Read,
            ts_ms: 0,
            vsn: Vsn(n as u64),
            source: SourceInfo {
                db: "src".into(),
                schema: "public".into(),
                table: "t".into(),
                snapshot: true,
                lsn_or_scn: "0/0".into(),
                txid: None,
                commit_ts_ms: 0,
            },
        };
        let (mut key, mut value) = (Vec::new(), Vec::new());
        codec.encode_key(&event.key, &mut key)?;
        codec.encode_value(&event, &mut value)?;
        let partition = (n % i64::from(partitions)) as i32;
        let record = FutureRecord::to(&topic)
            .partition(partition)
            .key(&key)
            .payload(&value);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => anyhow::bail!("producing: {e}"),
        }
        if pending.len() >= 20_000 {
            for p in pending.drain(..) {
                p.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for p in pending.drain(..) {
        p.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(60))?;
    eprintln!("produced {rows} events in {:?}", produce.elapsed());

    let mut toml = stack.config_toml(
        &id,
        &source_db,
        &target_db,
        &source_db,
        &format!("127.0.0.1:{}", free_port()),
    );
    toml.push_str(&format!(
        "\n[schema_registry]\nurl = \"{registry_url}\"\n\n[importer]\nworkers = {workers}\n"
    ));
    let config = Config::from_toml_str(&toml)?;
    let group = topics.import_group(Destination::Target);
    let (trigger, shutdown) = shutdown::channel();
    let started = Instant::now();
    let task = tokio::spawn(ferry_importer::run_for(
        Destination::Target,
        config,
        shutdown,
    ));
    wait_until("every row imported", Duration::from_secs(600), || async {
        let n: Option<i64> = target
            .query_one(
                "SELECT sum(snapshot_rows)::bigint FROM ferry_metadata.table_counts \
                 WHERE consumer_group = $1",
                &[&group],
            )
            .await
            .ok()
            .and_then(|r| r.get(0));
        Ok((n == Some(rows)).then_some(()))
    })
    .await?;
    let elapsed = started.elapsed();
    trigger.trigger();
    task.await??;
    let count: i64 = target
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(count, rows);
    eprintln!(
        "imported {rows} snapshot rows with workers = {workers}, {partitions} partitions in {elapsed:?}: {:.0} rows/s",
        rows as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
