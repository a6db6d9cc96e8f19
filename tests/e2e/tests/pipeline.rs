//! Source → exporter → Kafka → importer → target, with a write load running during the
//! snapshot and the change stream: after the load stops and the importer catches up,
//! every table is equal row by row, and the per-table counts the importer stored in
//! `ferry_metadata` equal what the exporter produced.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_shared::codec::EventDecoder;
use ferry_shared::config::Config;
use ferry_shared::envelope::Op;
use ferry_shared::registry::RegistryClient;
use ferry_shared::shutdown;
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_testkit::{free_port, kafka, unique_name, wait_until, Stack};
use rand::Rng;

const DDL: &str = "
    CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric(12,2) NOT NULL,
                           note text, updated timestamptz NOT NULL DEFAULT now());
    ALTER TABLE accounts REPLICA IDENTITY FULL;
    CREATE TABLE events (id bigint PRIMARY KEY, account bigint, payload jsonb, tags text[]);
    ALTER TABLE events REPLICA IDENTITY FULL;
    CREATE TABLE users (id bigint PRIMARY KEY, email text UNIQUE);
    ALTER TABLE users REPLICA IDENTITY FULL;
";

const TABLES: &[&str] = &["accounts", "events", "users"];

/// One text per table, equal on both sides exactly when the contents are equal.
async fn fingerprint(client: &tokio_postgres::Client, table: &str) -> Result<(i64, String)> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY id)), '') FROM {table} t"
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// A pgbench-style load: small transactions of inserts, updates and deletes.
async fn write_load(client: tokio_postgres::Client, until: Instant) -> Result<u64> {
    let mut next_id: i64 = 1_000_000;
    let mut transactions = 0;
    client
        .batch_execute("CREATE TEMP TABLE swap (ex text, ey text)")
        .await?;
    while Instant::now() < until {
        let (kind, a, b) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..8),
                rng.random_range(1..20_000i64),
                rng.random_range(-500..500i64),
            )
        };
        let sql = match kind {
            0 => {
                next_id += 1;
                format!(
                    "INSERT INTO accounts VALUES ({next_id}, {b}.25, 'new', now());
                     INSERT INTO events VALUES ({next_id}, {next_id}, '{{\"k\": {b}}}', ARRAY['x', NULL]);"
                )
            }
            1 | 2 => format!(
                "UPDATE accounts SET balance = balance + {b}, updated = now() WHERE id = {a};
                 UPDATE accounts SET balance = balance - {b}, note = repeat('n', {}) WHERE id = {};",
                b.unsigned_abs() % 40,
                a / 2 + 1
            ),
            3 => format!("DELETE FROM events WHERE id = {a}; DELETE FROM accounts WHERE id = {a};"),
            4 => format!("UPDATE events SET tags = tags || '{b}'::text WHERE account = {a};"),
            // Unique values freed by one row and taken by another: a swap, and a delete
            // whose value a new row takes at once.
            6 => {
                let (x, y) = (a % 200 + 1, (a + 7) % 200 + 1);
                format!(
                    "DELETE FROM swap;
                     INSERT INTO swap SELECT (SELECT email FROM users WHERE id = {x}),
                                             (SELECT email FROM users WHERE id = {y});
                     UPDATE users SET email = NULL WHERE id IN ({x}, {y});
                     UPDATE users SET email = (SELECT ex FROM swap) WHERE id = {y};
                     UPDATE users SET email = (SELECT ey FROM swap) WHERE id = {x};"
                )
            }
            7 => {
                let x = a % 200 + 1;
                next_id += 1;
                format!(
                    "DELETE FROM swap;
                     INSERT INTO swap SELECT (SELECT email FROM users WHERE id = {x}), NULL;
                     DELETE FROM users WHERE id = {x};
                     INSERT INTO users SELECT {next_id}, ex FROM swap WHERE ex IS NOT NULL;"
                )
            }
            _ => format!(
                "UPDATE accounts SET note = NULL WHERE id BETWEEN {a} AND {a} + 20;"
            ),
        };
        client
            .batch_execute(&format!("BEGIN; {sql} COMMIT;"))
            .await
            .with_context(|| sql.clone())?;
        transactions += 1;
    }
    Ok(transactions)
}

/// What the exporter produced per table: snapshot rows, inserts, updates, deletes.
async fn exported_counts(config: &Config, topics: &Topics) -> Result<BTreeMap<String, [i64; 4]>> {
    // The coordinator's built-in registry, with its token.
    let decoder = EventDecoder::new(RegistryClient::from_config(config)?);
    let mut counts = BTreeMap::new();
    for table in TABLES {
        let topic = topics.table(Stream::Source, "public", table);
        let mut seen = std::collections::HashSet::new();
        let mut c = [0i64; 4];
        for record in kafka::consume_all(&config.kafka.bootstrap_servers, &topic).await? {
            let event = decoder
                .decode_event(record.3.as_deref().context("a record without value")?)
                .await?;
            // An event sent twice (a retry) carries the same VSN: count it once.
            if !seen.insert(event.vsn) {
                continue;
            }
            c[match event.op {
                Op::Read => 0,
                Op::Create => 1,
                Op::Update => 2,
                Op::Delete => 3,
            }] += 1;
        }
        counts.insert((*table).to_owned(), c);
    }
    Ok(counts)
}

fn partition_count(bootstrap: &str, topic: &str) -> Result<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loaded_source_arrives_equal_with_exact_counts() -> Result<()> {
    let stack = Stack::get();
    let source_db = stack.source.create_database("pipe_src").await?;
    let target_db = stack.target.create_database("pipe_dst").await?;
    let source = stack.source.connect(&source_db).await?;
    let target = stack.target.connect(&target_db).await?;
    source.batch_execute(DDL).await?;
    target.batch_execute(DDL).await?;
    source
        .batch_execute(
            "INSERT INTO accounts SELECT g, g * 1.5, 'seed ' || g, now() FROM generate_series(1, 20000) g;
             INSERT INTO events SELECT g, g % 20000 + 1, jsonb_build_object('g', g), ARRAY[g::text]
               FROM generate_series(1, 20000) g;
             INSERT INTO users SELECT g, 'u' || g || '@e' FROM generate_series(1, 200) g;",
        )
        .await?;

    let migration = unique_name("pipe");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut text = stack.config_toml(&migration, &source_db, &target_db, &target_db, &listen);
    text.push_str("\n[exporter]\nchunk_rows = 5000\nsnapshot_workers = 2\n");
    let config = Config::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let topics = Topics::new(config.migration.topic_prefix());

    let (trigger, stop) = shutdown::channel();
    let coordinator = tokio::spawn(ferry_coordinator::run(config.clone(), stop.clone()));
    ferry_testkit::wait_listening(&listen, Duration::from_secs(90)).await?;

    // The load starts with the snapshot and runs on through the change stream.
    let writer = tokio::spawn(write_load(
        stack.source.connect(&source_db).await?,
        Instant::now() + Duration::from_secs(10),
    ));
    let exporter = tokio::spawn(ferry_exporter::run(config.clone(), stop.clone()));
    // The importer starts once the exporter has made its topics.
    wait_until(
        "the exporter's first checkpoint",
        Duration::from_secs(60),
        || {
            let (bootstrap, state) = (config.kafka.bootstrap_servers.clone(), topics.state());
            async move {
                let records = kafka::consume_all(&bootstrap, &state).await?;
                Ok(Some(()).filter(|_| !records.is_empty()))
            }
        },
    )
    .await?;
    let importer = tokio::spawn(ferry_importer::run_for(
        Destination::Target,
        config.clone(),
        stop.clone(),
    ));

    let transactions = writer.await??;
    // A table with a unique constraint besides its key travels in one partition.
    let partitions = |table: &str| {
        let topic = topics.table(Stream::Source, "public", table);
        let bootstrap = config.kafka.bootstrap_servers.clone();
        async move { partition_count(&bootstrap, &topic) }
    };
    assert_eq!(partitions("users").await?, 1);
    assert_eq!(partitions("accounts").await?, 4);
    assert!(
        transactions > 50,
        "the load ran only {transactions} transactions"
    );

    for table in TABLES {
        let expected = fingerprint(&source, table).await?;
        let caught_up = wait_until(
            &format!("{table} on the target to equal the source"),
            Duration::from_secs(180),
            || {
                let (target, expected) = (&target, expected.clone());
                async move {
                    let actual = fingerprint(target, table).await?;
                    Ok(Some(()).filter(|_| actual == expected))
                }
            },
        )
        .await;
        if caught_up.is_err() {
            assert!(
                !exporter.is_finished(),
                "the exporter stopped: {:?}",
                exporter.await
            );
            assert!(
                !importer.is_finished(),
                "the importer stopped: {:?}",
                importer.await
            );
        }
        let actual = fingerprint(&target, table).await?;
        assert_eq!(actual, expected, "table {table} differs after catch-up");
    }

    // The importer's stored counts equal what the exporter produced.
    let exported = exported_counts(&config, &topics).await?;
    let group = topics.import_group(Destination::Target);
    let rows = wait_until("the importer's counts", Duration::from_secs(30), || {
        let (target, group, exported) = (&target, group.clone(), exported.clone());
        async move {
            let rows = target
                .query(
                    "SELECT table_name, snapshot_rows, inserts, updates, deletes \
                     FROM ferry_metadata.table_counts WHERE consumer_group = $1 ORDER BY 1",
                    &[&group],
                )
                .await?;
            let stored: BTreeMap<String, [i64; 4]> = rows
                .iter()
                .map(|r| (r.get(0), [r.get(1), r.get(2), r.get(3), r.get(4)]))
                .collect();
            Ok(Some(stored.clone()).filter(|s| *s == exported))
        }
    })
    .await;
    let stored = rows.with_context(|| format!("exported {exported:?}"))?;
    assert_eq!(stored, exported);
    // The load deletes rows while the snapshot runs, so a few of the 20,000 may be gone
    // before their chunk is read; the rest come as snapshot rows.
    assert!(exported["accounts"][0] > 15_000, "{exported:?}");
    assert!(
        exported["accounts"][2] > 0 && exported["accounts"][3] > 0,
        "{exported:?}"
    );

    trigger.trigger();
    importer.await??;
    exporter.await??;
    coordinator.await??;
    Ok(())
}
