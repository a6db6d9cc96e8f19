//! Snapshot and change capture against real PostgreSQL and the local broker: the
//! topics, read back and applied in VSN order, rebuild the source exactly.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_shared::envelope::Op;
use ferry_shared::shutdown;
use ferry_shared::topics::Stream;
use ferry_shared::value::Datum;
use rand::Rng;

const TABLES: &str = "
CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, t text);
CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), at timestamptz, data bytea);
CREATE TABLE pairs (a int, b text, val jsonb, PRIMARY KEY (a, b));
ALTER TABLE big REPLICA IDENTITY FULL;
ALTER TABLE items REPLICA IDENTITY FULL;
ALTER TABLE pairs REPLICA IDENTITY FULL;
INSERT INTO big SELECT g, g % 1000, 'row ' || g FROM generate_series(1, 1000000) g;
INSERT INTO items SELECT g, 'item ' || g, g * 1.25, '2024-01-01'::timestamptz + g * interval '1 minute', decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g;
INSERT INTO pairs SELECT g % 50, 'b' || g, jsonb_build_object('g', g) FROM generate_series(1, 500) g;
";

/// Random small transactions on every table, including key-changing updates.
async fn write_load(m: &Migration, until: tokio::time::Instant) -> Result<u64> {
    let c = m.source().await?;
    let mut n = 0u64;
    let mut next_id = 2_000_000i64;
    while tokio::time::Instant::now() < until {
        let sql = {
            let mut r = rand::rng();
            let id = r.random_range(1..1_000_000i64);
            let item = r.random_range(1..2500);
            next_id += 1;
            match r.random_range(0..9) {
                0 => format!("INSERT INTO big VALUES ({next_id}, 1, 'new') ON CONFLICT DO NOTHING"),
                1 => format!("UPDATE big SET v = v + 1, t = t || '+' WHERE id = {id}"),
                2 => format!("DELETE FROM big WHERE id = {id}"),
                3 => format!("UPDATE big SET id = {next_id} WHERE id = {id}"),
                4 => format!("INSERT INTO items VALUES ({item}, 'n{item}', 3.5, now(), '\\x00ff') ON CONFLICT (id) DO UPDATE SET name = 'upserted'"),
                5 => format!("UPDATE items SET price = price + 1, data = NULL WHERE id = {item}"),
                6 => format!("DELETE FROM items WHERE id = {item}"),
                7 => format!("UPDATE pairs SET val = val || '{{\"x\": 1}}' WHERE a = {}", item % 50),
                _ => format!("BEGIN; DELETE FROM pairs WHERE a = {0} AND b = 'b{1}'; INSERT INTO pairs VALUES ({0}, 'n{next_id}', '[]'); COMMIT", item % 50, item),
            }
        };
        c.batch_execute(&sql).await?;
        n += 1;
    }
    Ok(n)
}

/// Waits until the exporter made its slot (changes after this are streamed, not read
/// by the snapshot).
async fn wait_for_slot(m: &Migration, c: &tokio_postgres::Client) -> Result<()> {
    let slot = ferry_exporter::slot_name(&m.config.migration.id, Stream::Source);
    ferry_testkit::wait_until("the slot", Duration::from_secs(60), || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .get(0);
        Ok((n == 1).then_some(()))
    })
    .await?;
    Ok(())
}

async fn check_tables(m: &Migration, tables: &[&str]) -> Result<()> {
    let c = m.source().await?;
    for table in tables {
        let topic = m.topics().table(Stream::Source, "public", table);
        let events = read_topic(m, &topic).await?;
        assert_vsns_increase_per_partition(&topic, &events);
        let rebuilt = rebuild(&events);
        let (_, source) = source_rows(&c, table).await?;
        assert_same(table, &source, &rebuilt);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_while_writing_then_changes_rebuild_the_source_exactly() -> Result<()> {
    let m = Migration::new("exp", 3, "chunk_rows = 100000\nsnapshot_workers = 3").await?;
    let c = m.source().await?;
    c.batch_execute(TABLES).await?;

    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    let writer = write_load(&m, tokio::time::Instant::now() + Duration::from_secs(12)).await?;
    assert!(writer > 100, "the writer made only {writer} changes");
    c.batch_execute("INSERT INTO items VALUES (999999, 'marker', 0, now(), NULL)")
        .await?;
    let cp = m
        .sync(
            &c,
            "UPDATE items SET name = 'synced' WHERE id = 999999",
            Duration::from_secs(180),
        )
        .await?;
    assert!(cp.snapshot.done);
    trigger.trigger();
    exporter.await??;

    check_tables(&m, &["big", "items", "pairs"]).await?;

    // The big table was split into chunks (the plan is in the checkpoints' history).
    let state = ferry_shared::kafka::read_all(&m.kafka(), &m.topics().state()).await?;
    let most_chunks = state
        .iter()
        .filter_map(|r| r.value.as_deref())
        .filter_map(|v| ferry_shared::checkpoint::ExporterCheckpoint::from_json(v).ok())
        .filter_map(|cp| cp.snapshot.tables.get("public.big").map(|t| t.chunks.len()))
        .max()
        .unwrap_or(0);
    assert!(
        most_chunks >= 5,
        "public.big was read in {most_chunks} chunks"
    );

    // Every change carries its transaction.
    let events = read_topic(&m, &m.topics().table(Stream::Source, "public", "items")).await?;
    assert!(events.iter().any(|e| e.op == Op::Read));
    for e in events.iter().filter(|e| e.op != Op::Read) {
        assert!(e.txid.is_some() && e.lsn.contains('/'), "{e:?}");
    }
    let synced: Vec<_> = events
        .iter()
        .filter(|e| e.key == vec![Datum::Int(999999)])
        .collect();
    assert_eq!(synced.len(), 2);
    assert_eq!(synced[1].op, Op::Update);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_arrive_complete() -> Result<()> {
    let m = Migration::new("toast", 2, "").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs REPLICA IDENTITY FULL;
         INSERT INTO docs VALUES (1, 'small', 0);",
    )
    .await?;
    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    m.sync(
        &c,
        "UPDATE docs SET n = 1 WHERE id = 1",
        Duration::from_secs(60),
    )
    .await?;
    // Incompressible, far above the TOAST threshold.
    c.batch_execute(
        "INSERT INTO docs SELECT 2, string_agg(md5(g::text), ''), 0 FROM generate_series(1, 8000) g",
    )
    .await?;
    m.sync(
        &c,
        "UPDATE docs SET n = n + 1 WHERE id = 2",
        Duration::from_secs(60),
    )
    .await?;
    trigger.trigger();
    exporter.await??;

    let events = read_topic(&m, &m.topics().table(Stream::Source, "public", "docs")).await?;
    let update = events
        .iter()
        .rev()
        .find(|e| e.key == vec![Datum::Int(2)] && e.op == Op::Update)
        .expect("the update of row 2");
    let Some(after) = &update.after else {
        panic!("no after image")
    };
    let Datum::String(body) = &after[1] else {
        panic!("body is {:?}", after[1])
    };
    assert_eq!(body.len(), 8000 * 32);
    assert_eq!(after[2], Datum::Int(1));
    check_tables(&m, &["docs"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_advances_past_unrelated_wal_and_heartbeats_are_sent() -> Result<()> {
    let m = Migration::new("idle", 1, "").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE watched (id int PRIMARY KEY);
         ALTER TABLE watched REPLICA IDENTITY FULL;",
    )
    .await?;
    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    m.sync(
        &c,
        "INSERT INTO watched VALUES (1)",
        Duration::from_secs(60),
    )
    .await?;

    // WAL of a table outside the publication only: the checkpoint and then the slot's
    // confirmed position move past it anyway.
    c.batch_execute(
        "CREATE TABLE other (x int); INSERT INTO other SELECT generate_series(1, 10000);",
    )
    .await?;
    let row = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?;
    let after: ferry_shared::position::Lsn = row.get::<_, String>(0).parse()?;
    let cp = m
        .wait_checkpoint_past(
            ferry_shared::position::Lsn(after.0 - 1),
            Duration::from_secs(60),
        )
        .await?;
    assert!(cp.lsn >= after);
    let slot = ferry_exporter::slot_name(&m.config.migration.id, Stream::Source);
    ferry_testkit::wait_until("the slot to confirm the checkpoint", Duration::from_secs(30), || async {
        let row = c
            .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await?;
        let confirmed: ferry_shared::position::Lsn = row.get::<_, String>(0).parse()?;
        Ok((confirmed >= after).then_some(()))
    })
    .await?;

    trigger.trigger();
    exporter.await??;
    let status = ferry_shared::kafka::read_compacted(&m.kafka(), &m.topics().status()).await?;
    let beat = status
        .get("exporter.source".as_bytes())
        .expect("a heartbeat");
    let beat: ferry_shared::heartbeat::ExporterHeartbeat = serde_json::from_slice(beat)?;
    assert_eq!(beat.phase, "stopped");
    assert_eq!(beat.last_vsn.0, 1);
    assert!(beat.lsn >= after);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_only_reads_once_and_exits_without_a_slot() -> Result<()> {
    let (m, c, topic) = snapshot_only_of_s("snaponly", 5000, "").await?;
    let run = |m: &Migration| ferry_exporter::run(m.config.clone(), shutdown::Shutdown::never());
    tokio::time::timeout(Duration::from_secs(120), run(&m)).await??;
    let events = read_topic(&m, &topic).await?;
    assert_eq!(events.len(), 5000);
    assert!(events.iter().all(|e| e.op == Op::Read));
    check_tables(&m, &["s"]).await?;
    let slots: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(slots, 0);
    // A second run finds the snapshot complete and produces nothing.
    tokio::time::timeout(Duration::from_secs(60), run(&m)).await??;
    assert_eq!(read_topic(&m, &topic).await?.len(), 5000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_only_sends_no_snapshot_rows() -> Result<()> {
    let m = Migration::new("chgonly", 2, "export_type = \"changes-only\"").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE s (id int PRIMARY KEY, v text);
         ALTER TABLE s REPLICA IDENTITY FULL;
         INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .await?;
    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    wait_for_slot(&m, &c).await?;
    m.sync(
        &c,
        "UPDATE s SET v = 'x' WHERE id = 7; DELETE FROM s WHERE id = 8",
        Duration::from_secs(60),
    )
    .await?;
    trigger.trigger();
    exporter.await??;
    let mut events = read_topic(&m, &m.topics().table(Stream::Source, "public", "s")).await?;
    events.sort_by_key(|e| e.vsn);
    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::Update, Op::Delete]);
    assert_eq!(
        events[0].before.as_ref().map(|b| b[1].clone()),
        Some(Datum::String("v7".into()))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_tables_travel_as_their_root() -> Result<()> {
    let m = Migration::new("parted", 2, "").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE p (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE p_1 PARTITION OF p FOR VALUES FROM (0) TO (1000);
         CREATE TABLE p_2 PARTITION OF p FOR VALUES FROM (1000) TO (3000);
         ALTER TABLE p REPLICA IDENTITY FULL;
         ALTER TABLE p_1 REPLICA IDENTITY FULL;
         ALTER TABLE p_2 REPLICA IDENTITY FULL;
         INSERT INTO p SELECT g, 'v' FROM generate_series(1, 1999) g;",
    )
    .await?;
    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    m.sync(
        &c,
        "UPDATE p SET v = 'moved', id = id + 2000 WHERE id < 10; DELETE FROM p WHERE id BETWEEN 1500 AND 1510; INSERT INTO p VALUES (0, 'zero')",
        Duration::from_secs(60),
    )
    .await?;
    trigger.trigger();
    exporter.await??;
    check_tables(&m, &["p"]).await?;
    Ok(())
}

/// Table `s` (int key, text) with `rows` rows.
fn table_s(rows: u32) -> String {
    format!(
        "CREATE TABLE s (id int PRIMARY KEY, v text);
         ALTER TABLE s REPLICA IDENTITY FULL;
         INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, {rows}) g;"
    )
}

/// A snapshot-only migration (chunks of 1000 rows, two partitions, `exporter` settings
/// `extra`) of table `s` with `rows` rows: the migration, a source connection, and the
/// table's topic.
async fn snapshot_only_of_s(
    name: &str,
    rows: u32,
    extra: &str,
) -> Result<(Migration, tokio_postgres::Client, String)> {
    let settings = format!("export_type = \"snapshot-only\"\nchunk_rows = 1000\n{extra}");
    let m = Migration::new(name, 2, &settings).await?;
    let c = m.source().await?;
    c.batch_execute(&table_s(rows)).await?;
    let topic = m.topics().table(Stream::Source, "public", "s");
    Ok((m, c, topic))
}

/// Commits `offsets` (partition -> next offset) for `group` on `topic`, as an importer
/// does after each batch.
fn commit_as_importer(
    m: &Migration,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let mut config = m.kafka();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(o))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_waits_while_an_importer_is_too_far_behind() -> Result<()> {
    let (m, _c, topic) = snapshot_only_of_s(
        "snaplead",
        40000,
        "snapshot_workers = 1\nsnapshot_max_lead = 3000",
    )
    .await?;
    ferry_shared::kafka::ensure_topics(
        &m.kafka(),
        &[ferry_shared::kafka::TopicSpec {
            name: topic.clone(),
            partitions: 2,
            replication: 1,
            compacted: false,
        }],
    )
    .await?;
    // An importer of the target that has applied nothing yet.
    let group = m
        .topics()
        .import_group(ferry_shared::topics::Destination::Target);
    commit_as_importer(&m, &group, &topic, &[(0, 0), (1, 0)])?;

    let exporter = tokio::spawn(ferry_exporter::run(
        m.config.clone(),
        shutdown::Shutdown::never(),
    ));
    let held = |n: i64| n > 0 && n <= 3000 + 2 * 1500;
    let total = || async {
        let w = ferry_shared::kafka::watermarks(&m.kafka(), &topic).await?;
        Ok::<i64, anyhow::Error>(w.iter().map(|(_, h)| h).sum())
    };
    ferry_testkit::wait_until("the first chunks", Duration::from_secs(60), || async {
        Ok(held(total().await?).then_some(()))
    })
    .await?;
    // It stays held: the lead is over the limit and nothing is applied.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = total().await?;
    assert!(
        held(n),
        "{n} records in the topic while the importer applied none"
    );
    assert!(
        !exporter.is_finished(),
        "the snapshot finished past the importer"
    );

    // The importer catches up, batch by batch: the snapshot goes on and completes.
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        while !exporter.is_finished() {
            let w = ferry_shared::kafka::watermarks(&m.kafka(), &topic).await?;
            let offsets: Vec<(i32, i64)> = w
                .iter()
                .enumerate()
                .map(|(p, (_, h))| (p as i32, *h))
                .collect();
            commit_as_importer(&m, &group, &topic, &offsets)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<(), anyhow::Error>(())
    })
    .await;
    done??;
    exporter.await??;
    let events = read_topic(&m, &topic).await?;
    assert_eq!(events.len(), 40000);
    check_tables(&m, &["s"]).await?;
    Ok(())
}

/// The stamper produces each batch's events in calls of many records and waits when
/// librdkafka's local queue is full: with a queue of 64 records that happens inside
/// nearly every call, and rows of about 190 kB make it produce a batch in several calls
/// (every megabyte). Nothing may be lost, doubled or reordered inside a partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_and_large_rows_lose_double_and_reorder_nothing() -> Result<()> {
    let mut m = Migration::new("tinyq", 3, "chunk_rows = 2000\nsnapshot_workers = 2").await?;
    m.config
        .kafka
        .properties
        .insert("queue.buffering.max.messages".into(), "64".into());
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE s (id int PRIMARY KEY, v text);
         CREATE TABLE wide (id int PRIMARY KEY, blob text);
         ALTER TABLE s REPLICA IDENTITY FULL;
         ALTER TABLE wide REPLICA IDENTITY FULL;
         INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 6000) g;
         INSERT INTO wide SELECT g, repeat(md5(g::text), 6000) FROM generate_series(1, 40) g;",
    )
    .await?;
    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    // The changes come after the slot (and its snapshot) was made.
    wait_for_slot(&m, &c).await?;
    // Transactions over both tables, large and small rows interleaved.
    for i in 0..30 {
        c.batch_execute(&format!(
            "BEGIN;
             UPDATE s SET v = v || '+' WHERE id <= 3000 AND id % 30 = {i};
             UPDATE wide SET blob = repeat(md5('{i}' || id), 6000) WHERE id % 10 = {m10};
             INSERT INTO s VALUES ({new}, 'new');
             DELETE FROM s WHERE id = {gone};
             COMMIT",
            m10 = i % 10,
            new = 10_000 + i,
            gone = 5000 + i,
        ))
        .await?;
    }
    m.sync(
        &c,
        "UPDATE s SET v = 'synced' WHERE id = 1",
        Duration::from_secs(120),
    )
    .await?;
    trigger.trigger();
    exporter.await??;
    check_tables(&m, &["s", "wide"]).await?;
    // Every change is there once: 6000 snapshot rows of s, 30 × (100 updates + 1 insert +
    // 1 delete), and the sync.
    let s = read_topic(&m, &m.topics().table(Stream::Source, "public", "s")).await?;
    assert_eq!(s.len(), 6000 + 30 * 102 + 1);
    let wide = read_topic(&m, &m.topics().table(Stream::Source, "public", "wide")).await?;
    assert_eq!(wide.len(), 40 + 30 * 4);
    Ok(())
}
