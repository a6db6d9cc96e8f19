//! The importer against real PostgreSQL and the local broker, applying synthetic
//! streams (`common::Fixture`) with in-process importers (`run_for` in spawned tasks).
//! Every test compares the destination table row by row with the expected contents and
//! checks the counts in `ferry_metadata` exactly. The `four_workers_*` tests repeat the
//! exactly-once properties with four workers. Unique keys besides the primary key are in
//! `import_unique.rs`, the binary killed with SIGKILL in `import_sigkill.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_shared::codec::TableEncoder;
use ferry_shared::config::Config;
use ferry_shared::envelope::{ChangeEvent, Op, SourceInfo};
use ferry_shared::position::Vsn;
use ferry_shared::registry::RegistryClient;
use ferry_shared::shutdown;
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_shared::value::Datum;
use ferry_testkit::{kafka, unique_name, wait_until, Stack};
use rand::Rng;
use rdkafka::producer::FutureRecord;

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

/// Kafka's committed offsets (for tools and the exporter's snapshot lead) follow the
/// positions stored in the destination: sent while the importer runs (at most every
/// 200 ms, however many destination commits), and the last ones when it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_offsets_follow_the_stored_positions_while_running_and_on_leaving() -> Result<()> {
    let mut f = Fixture::new("imp_offsets", DDL, DDL, 4, 50).await?;
    let kafka = f.config().kafka.client_config();
    let (group, topic) = (f.group(), f.topic.clone());
    let committed = |want: usize| {
        let (kafka, group, topic) = (kafka.clone(), group.clone(), topic.clone());
        async move {
            let sum = tokio::task::spawn_blocking(move || {
                let probe = ferry_shared::kafka::LagProbe::new(&kafka, &[group], &[topic])?;
                Ok::<_, anyhow::Error>(probe.committed()?.first().and_then(|(_, s)| *s))
            })
            .await??;
            Ok((sum == Some(want as u64)).then_some(()))
        }
    };
    f.snapshot(300).await?;
    f.changes(700, 700).await?;
    let importer = f.start();
    f.wait_caught_up().await?;
    let end = f.produced.len();
    wait_until(
        "kafka's committed offsets at the topic's end while running",
        WAIT,
        || committed(end),
    )
    .await?;
    // Batches of 50 rows: many destination commits. The stop comes the moment the
    // destination has every row, well inside the 200 ms between two commits, so that
    // it is the commit sent on leaving that brings Kafka's offsets to the end.
    f.changes(600, 700).await?;
    let (want, deadline) = (f.total(), tokio::time::Instant::now() + WAIT);
    let target = f.target().await?;
    loop {
        let applied: i64 = target
            .query_one(
                "SELECT coalesce(sum(snapshot_rows + inserts + updates + deletes), 0)::bigint \
                 FROM ferry_metadata.table_counts WHERE consumer_group = $1",
                &[&f.group()],
            )
            .await?
            .get(0);
        if applied >= want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the importer did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    importer.stop().await?;
    let end = f.produced.len();
    wait_until(
        "kafka's committed offsets at the topic's end after the importer left",
        Duration::from_secs(3),
        || committed(end),
    )
    .await?;
    f.assert_equal().await
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
    let table = public_table(&source, "t2").await?;
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
