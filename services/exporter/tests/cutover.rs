#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The exporter follows the migration status record (MSR) in `_state`: the source
//! stream stops for a cutover with an exact final record, the target stream waits on
//! standby and then exports above the VSN it was given, and the checkpoint's per-table
//! counts equal the events in the topics, across a kill -9.
//!
//! The tests write the MSR themselves, as the coordinator would.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use ferry_shared::checkpoint::{checkpoint_key, ExporterCheckpoint};
use ferry_shared::config::Config;
use ferry_shared::envelope::Op;
use ferry_shared::envelope::OpCounts;
use ferry_shared::heartbeat::heartbeat_key;
use ferry_shared::kafka::{self, TopicSpec};
use ferry_shared::position::Vsn;
use ferry_shared::shutdown;
use ferry_shared::state::{final_key, ExporterFinal, MigrationStatus, StreamPhase, MSR_KEY};
use ferry_shared::topics::Stream;
use ferry_shared::value::session_settings_sql;
use ferry_testkit::{wait_until, Stack};
use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::Client;

/// Writes `msr` to `_state` as the coordinator does (creating the topic if needed).
async fn write_msr(m: &Migration, msr: &MigrationStatus) -> Result<()> {
    let state = m.topics().state();
    kafka::ensure_topics(
        &m.kafka(),
        &[TopicSpec {
            name: state.clone(),
            partitions: 1,
            replication: 1,
            compacted: true,
        }],
    )
    .await?;
    let producer: FutureProducer = m.kafka().create()?;
    producer
        .send(
            FutureRecord::to(&state)
                .key(MSR_KEY)
                .payload(&msr.to_json()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("writing the MSR: {e}"))?;
    Ok(())
}

fn msr(m: &Migration) -> MigrationStatus {
    MigrationStatus {
        migration_id: m.id.clone(),
        ..MigrationStatus::default()
    }
}

async fn stored<T: serde::de::DeserializeOwned>(m: &Migration, key: &str) -> Result<Option<T>> {
    let state = kafka::read_compacted(&m.kafka(), &m.topics().state()).await?;
    Ok(match state.get(key.as_bytes()) {
        Some(b) => Some(serde_json::from_slice(b)?),
        None => None,
    })
}

async fn checkpoint_of(m: &Migration, stream: Stream) -> Result<Option<ExporterCheckpoint>> {
    stored(m, &checkpoint_key(stream)).await
}

/// High watermark of every partition of `topic`.
async fn highs(m: &Migration, topic: &str) -> Result<Vec<i64>> {
    Ok(kafka::watermarks(&m.kafka(), topic)
        .await?
        .into_iter()
        .map(|(_, h)| h)
        .collect())
}

async fn sequence(c: &Client, name: &str) -> Result<(i64, bool)> {
    let row = c
        .query_one(
            &format!("SELECT last_value, is_called FROM public.{name}"),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Runs `fut` with a deadline.
async fn within<T>(what: &str, secs: u64, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .with_context(|| format!("timed out after {secs} s waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_stream_stops_for_cutover_with_an_exact_final_record() -> Result<()> {
    let m = Migration::new("cut", 2, "chunk_rows = 1000").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, n int NOT NULL);
         CREATE TABLE notes (id int PRIMARY KEY, body text);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         ALTER TABLE notes REPLICA IDENTITY FULL;
         CREATE SEQUENCE never_used START 42;
         INSERT INTO orders (n) SELECT g FROM generate_series(1, 3000) g;
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 200) g;",
    )
    .await?;

    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    m.sync(
        &c,
        "INSERT INTO orders (n) VALUES (-1)",
        Duration::from_secs(120),
    )
    .await?;
    // Changes committed right before the request, not waited for.
    for i in 0..50 {
        c.batch_execute(&format!(
            "INSERT INTO orders (n) VALUES ({i}); UPDATE notes SET body = body || '+' WHERE id = {};
             DELETE FROM orders WHERE id = {}",
            i + 1,
            i * 7 + 1
        ))
        .await?;
    }
    c.batch_execute("BEGIN; UPDATE orders SET id = 100000 WHERE id = 2; INSERT INTO notes VALUES (1000, 'last'); COMMIT")
        .await?;
    let mut request = msr(&m);
    request.source_stream.phase = StreamPhase::Stop;
    write_msr(&m, &request).await?;

    let result = within("the exporter to stop", 120, exporter).await?;
    result??;
    drop(trigger);

    let fin: ExporterFinal = stored(&m, &final_key(Stream::Source))
        .await?
        .context("no final record")?;
    assert_eq!(fin.stream, Stream::Source);

    // End offsets are the topics' watermarks, and the last VSN the highest in them.
    let mut max_vsn = Vsn::ZERO;
    let mut topics = Vec::new();
    for table in ["notes", "orders"] {
        let topic = m.topics().table(Stream::Source, "public", table);
        assert_eq!(
            fin.end_offsets.get(&topic),
            Some(&highs(&m, &topic).await?),
            "end offsets of {topic}"
        );
        let events = read_topic(&m, &topic).await?;
        assert_vsns_increase_per_partition(&topic, &events);
        max_vsn = max_vsn.max(events.iter().map(|e| e.vsn).max().unwrap_or(Vsn::ZERO));
        // Every change committed before the request is there.
        let (_, rows) = source_rows(&c, table).await?;
        assert_same(table, &rows, &rebuild(&events));
        topics.push(topic);
    }
    assert_eq!(fin.end_offsets.len(), 2, "{:?}", fin.end_offsets);
    assert_eq!(fin.last_vsn, max_vsn);
    let cp = checkpoint_of(&m, Stream::Source)
        .await?
        .context("no checkpoint")?;
    assert_eq!(cp.next_vsn, Vsn(max_vsn.0 + 1));
    assert_eq!(cp.lsn, fin.lsn);

    // Sequences, exactly.
    let seqs: HashMap<&str, (i64, bool)> = fin
        .sequences
        .iter()
        .map(|s| {
            assert_eq!(s.schema, "public");
            (s.name.as_str(), (s.last_value, s.is_called))
        })
        .collect();
    assert_eq!(seqs.len(), 2, "{:?}", fin.sequences);
    let orders_seq = sequence(&c, "orders_id_seq").await?;
    assert_eq!(orders_seq, (3051, true));
    assert_eq!(seqs.get("orders_id_seq"), Some(&orders_seq));
    assert_eq!(seqs.get("never_used"), Some(&(42, false)));
    assert_eq!(sequence(&c, "never_used").await?, (42, false));

    // A restart after the stop returns at once and produces nothing.
    let state_high = highs(&m, &m.topics().state()).await?;
    let mut before = Vec::new();
    for t in &topics {
        before.push(highs(&m, t).await?);
    }
    let again = within(
        "the restarted exporter to return",
        60,
        ferry_exporter::run(m.config.clone(), shutdown::Shutdown::never()),
    )
    .await?;
    again?;
    for (t, b) in topics.iter().zip(&before) {
        assert_eq!(&highs(&m, t).await?, b, "{t} changed after the restart");
    }
    assert_eq!(highs(&m, &m.topics().state()).await?, state_high);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_requested_while_the_exporter_is_down_completes_on_restart() -> Result<()> {
    let m = Migration::new("cutdown", 2, "").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, n int);
         ALTER TABLE t REPLICA IDENTITY FULL;
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 500) g;",
    )
    .await?;
    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    m.sync(
        &c,
        "UPDATE t SET n = 1 WHERE id = 1",
        Duration::from_secs(120),
    )
    .await?;
    trigger.trigger();
    within("the exporter to stop", 60, exporter).await???;

    // Changes and the stop request while it is down.
    c.batch_execute(
        "UPDATE t SET n = n + 1 WHERE id <= 100; DELETE FROM t WHERE id > 450;
         INSERT INTO t VALUES (1000, 7);",
    )
    .await?;
    let mut request = msr(&m);
    request.source_stream.phase = StreamPhase::Stop;
    write_msr(&m, &request).await?;
    within(
        "the restarted exporter to stop",
        120,
        ferry_exporter::run(m.config.clone(), shutdown::Shutdown::never()),
    )
    .await??;

    let fin: ExporterFinal = stored(&m, &final_key(Stream::Source))
        .await?
        .context("no final record")?;
    let topic = m.topics().table(Stream::Source, "public", "t");
    let events = read_topic(&m, &topic).await?;
    let (_, rows) = source_rows(&c, "t").await?;
    assert_same("t", &rows, &rebuild(&events));
    assert_eq!(fin.last_vsn, events.iter().map(|e| e.vsn).max().unwrap());
    assert_eq!(fin.end_offsets.get(&topic), Some(&highs(&m, &topic).await?));
    Ok(())
}

/// Changes that keep coming after the stop marker (an application not stopped) do not
/// keep the stream reading: it stops within its after-stop window (1 s) and counts them.
/// Two server-side sessions commit one-row transactions as fast as they can for 20 s;
/// the stream must stop long before they do. (Here the walsender, not the stream, is the
/// slower side, so the stream's queue empties between bursts and the window's timer is
/// reached either way; the stream's check of the window before it takes a waiting event
/// is for a stream that has fallen behind.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_while_changes_keep_coming() -> Result<()> {
    const LOAD_S: u64 = 20;
    let m = Migration::new("cutbusy", 2, "").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE t (id bigserial PRIMARY KEY, n int);
         ALTER TABLE t REPLICA IDENTITY FULL;
         INSERT INTO t (n) SELECT g FROM generate_series(1, 100) g;",
    )
    .await?;
    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    m.sync(
        &c,
        "INSERT INTO t (n) VALUES (-1)",
        Duration::from_secs(120),
    )
    .await?;
    let mut writers = Vec::new();
    for _ in 0..2 {
        let w = m.source().await?;
        writers.push(tokio::spawn(async move {
            w.batch_execute(&format!(
                "DO $$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
                   WHILE clock_timestamp() < t0 + interval '{LOAD_S} seconds' LOOP
                     INSERT INTO t (n) VALUES (1); COMMIT;
                   END LOOP; END $$"
            ))
            .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut request = msr(&m);
    request.source_stream.phase = StreamPhase::Stop;
    write_msr(&m, &request).await?;
    let asked = std::time::Instant::now();
    let stopped = within("the exporter to stop", LOAD_S + 60, exporter).await;
    let took = asked.elapsed();
    for w in writers {
        w.await??;
    }
    stopped???;
    drop(trigger);
    assert!(
        took < Duration::from_secs(LOAD_S / 2),
        "the stream stopped {took:?} after the request, while the load ran for {LOAD_S} s: its after-stop window did not end"
    );
    let fin: ExporterFinal = stored(&m, &final_key(Stream::Source))
        .await?
        .context("no final record")?;
    assert!(
        fin.after_stop_events > 0,
        "the changes after the marker are counted: {fin:?}"
    );
    Ok(())
}

/// A migration whose target is a fresh database of the target cluster.
async fn with_target(prefix: &str) -> Result<(Migration, String)> {
    let mut m = Migration::new(prefix, 2, "").await?;
    let target_db = Stack::get().target.create_database(prefix).await?;
    m.toml = m.toml.replacen(
        "database = \"unused_t\"",
        &format!("database = \"{target_db}\""),
        1,
    );
    assert!(m.toml.contains(&target_db), "{}", m.toml);
    m.config = Config::from_toml_str(&m.toml).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((m, target_db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_stream_waits_on_standby_then_exports_above_its_first_vsn() -> Result<()> {
    let (m, target_db) = with_target("tgt").await?;
    let t = Stack::get().target.connect(&target_db).await?;
    t.batch_execute(&session_settings_sql()).await?;
    t.batch_execute(
        "CREATE TABLE plain (id int PRIMARY KEY, v text);
         CREATE TABLE full_id (id int PRIMARY KEY, n int);
         ALTER TABLE full_id REPLICA IDENTITY FULL;
         INSERT INTO plain SELECT g, 'v' || g FROM generate_series(1, 100) g;
         INSERT INTO full_id SELECT g, g FROM generate_series(1, 100) g;",
    )
    .await?;
    let slot = ferry_exporter::slot_name(&m.id, Stream::Target);
    let slot_exists = || async {
        let row = t
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        anyhow::Ok(row.get::<_, i64>(0) > 0)
    };
    let identity = |table: &'static str| {
        let t = &t;
        async move {
            let row = t
                .query_one(
                    "SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass",
                    &[&format!("public.{table}")],
                )
                .await?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };
    write_msr(&m, &msr(&m)).await?; // the target stream on standby

    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run_for(
        Stream::Target,
        m.config.clone(),
        shutdown,
    ));
    // It reports standby, and for a few seconds creates nothing on the target.
    wait_until("a standby heartbeat", Duration::from_secs(60), || async {
        let beat: Option<ferry_shared::heartbeat::ExporterHeartbeat> =
            kafka::read_compacted(&m.kafka(), &m.topics().status())
                .await?
                .get(heartbeat_key(Stream::Target).as_bytes())
                .map(|b| serde_json::from_slice(b))
                .transpose()?;
        Ok(beat.filter(|b| b.phase == "standby"))
    })
    .await?;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        assert!(!slot_exists().await?, "a slot was created on standby");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(identity("plain").await?, "d");
    assert!(!exporter.is_finished());

    // Run, above VSN 1,000,000.
    let mut run = msr(&m);
    run.source_stream.phase = StreamPhase::Stop;
    run.target_stream.phase = StreamPhase::Run;
    run.target_stream.first_vsn = Vsn(1_000_000);
    write_msr(&m, &run).await?;
    let mut exporter = exporter;
    let cp = tokio::select! {
        r = &mut exporter => panic!("the target exporter ended: {r:?}"),
        cp = wait_until(
            "the target stream's first checkpoint",
            Duration::from_secs(60),
            || async { checkpoint_of(&m, Stream::Target).await },
        ) => cp?,
    };
    assert!(slot_exists().await?);
    assert!(cp.snapshot.done);
    assert_eq!(
        identity("plain").await?,
        "f",
        "plain did not get REPLICA IDENTITY FULL"
    );
    assert_eq!(identity("full_id").await?, "f");

    for i in 1..=40 {
        t.batch_execute(&format!(
            "INSERT INTO plain VALUES ({}, 'new'); UPDATE full_id SET n = n + 1 WHERE id = {i};
             DELETE FROM plain WHERE id = {i}",
            1000 + i
        ))
        .await?;
    }
    let plain = m.topics().table(Stream::Target, "public", "plain");
    let full = m.topics().table(Stream::Target, "public", "full_id");
    let (plain_events, full_events) = wait_until(
        "the target's changes in kafka",
        Duration::from_secs(60),
        || async {
            let p = read_topic(&m, &plain).await?;
            let f = read_topic(&m, &full).await?;
            Ok((p.len() >= 80 && f.len() >= 40).then_some((p, f)))
        },
    )
    .await?;
    trigger.trigger();
    within("the target exporter to stop", 60, exporter).await???;

    assert_eq!(plain_events.len(), 80, "no snapshot, only the 80 changes");
    assert_eq!(full_events.len(), 40);
    let mut all: Vec<Vsn> = Vec::new();
    for (topic, events) in [(&plain, &plain_events), (&full, &full_events)] {
        assert_vsns_increase_per_partition(topic, events);
        for e in events.iter() {
            assert!(
                e.vsn >= Vsn(1_000_000),
                "{topic}: VSN {} below the floor",
                e.vsn
            );
            assert_ne!(e.op, Op::Read);
            all.push(e.vsn);
        }
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 120, "a VSN names two events");
    assert_eq!(all[0], Vsn(1_000_000));
    // The deletes carry the whole old row (replica identity full).
    let delete = plain_events
        .iter()
        .find(|e| e.op == Op::Delete)
        .context("no delete")?;
    assert!(
        delete
            .before
            .as_ref()
            .is_some_and(|b| b.len() == 2 && b[1] != ferry_shared::value::Datum::Null),
        "{delete:?}"
    );
    Ok(())
}

/// Distinct events of the topics (by VSN) per table and op.
async fn counted(m: &Migration, tables: &[&str]) -> Result<BTreeMap<String, OpCounts>> {
    let mut out = BTreeMap::new();
    for table in tables {
        let topic = m.topics().table(Stream::Source, "public", table);
        let events = read_topic(m, &topic).await?;
        let mut seen: HashMap<Vsn, Op> = HashMap::new();
        for e in events {
            if let Some(op) = seen.insert(e.vsn, e.op) {
                assert_eq!(op, e.op, "VSN {} names two different events", e.vsn);
            }
        }
        let mut c = OpCounts::default();
        for op in seen.values() {
            match op {
                Op::Read => c.snapshot_rows += 1,
                Op::Create => c.inserts += 1,
                Op::Update => c.updates += 1,
                Op::Delete => c.deletes += 1,
            }
        }
        out.insert(format!("public.{table}"), c);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoint_counts_equal_the_events_in_the_topics_across_a_kill() -> Result<()> {
    let m = Migration::new("counts", 3, "chunk_rows = 5000").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE a (id bigint PRIMARY KEY, v int NOT NULL);
         CREATE TABLE b (id int PRIMARY KEY, s text);
         ALTER TABLE a REPLICA IDENTITY FULL;
         ALTER TABLE b REPLICA IDENTITY FULL;
         INSERT INTO a SELECT g, 0 FROM generate_series(1, 20000) g;
         INSERT INTO b SELECT g, 'x' FROM generate_series(1, 300) g;",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, &m.toml)?;
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-exporter"))
            .arg("-c")
            .arg(&path)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    let mut child = spawn()?;
    m.sync(
        &c,
        "UPDATE b SET s = 'y' WHERE id = 1",
        Duration::from_secs(120),
    )
    .await?;

    // A writer of inserts, updates (some changing the key) and deletes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let conn = m.source().await?;
        tokio::spawn(async move {
            let mut next = 1_000_000i64;
            while !stop.load(Ordering::Relaxed) {
                let sql = {
                    let mut r = rand::rng();
                    let id = r.random_range(1..20_000i64);
                    let s = r.random_range(1..400);
                    next += 1;
                    match r.random_range(0..6) {
                        0 => format!("INSERT INTO a VALUES ({next}, 1)"),
                        1 => format!("UPDATE a SET v = v + 1 WHERE id = {id}"),
                        2 => format!("DELETE FROM a WHERE id = {id}"),
                        3 => format!("UPDATE a SET id = {next} WHERE id = {id}"),
                        4 => format!("INSERT INTO b VALUES ({s}, 'n') ON CONFLICT (id) DO UPDATE SET s = b.s || '+'"),
                        _ => format!("BEGIN; DELETE FROM b WHERE id = {s}; UPDATE a SET v = -v WHERE id = {id}; COMMIT"),
                    }
                };
                conn.batch_execute(&sql).await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::Ok(())
        })
    };
    // Kill -9 once the stream has moved on under the load, then restart.
    let first = checkpoint_of(&m, Stream::Source)
        .await?
        .context("no checkpoint")?;
    wait_until(
        "the checkpoint to move under load",
        Duration::from_secs(60),
        || async {
            Ok(checkpoint_of(&m, Stream::Source)
                .await?
                .filter(|cp| cp.next_vsn.0 > first.next_vsn.0 + 300))
        },
    )
    .await?;
    child.start_kill()?;
    child.wait().await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // the load goes on while it is down
    let mut child = spawn()?;
    wait_until(
        "the restarted exporter to move on",
        Duration::from_secs(60),
        || async {
            let cp = checkpoint_of(&m, Stream::Source).await?;
            Ok(cp.filter(|cp| cp.next_vsn.0 > first.next_vsn.0 + 900))
        },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    let cp = m
        .sync(
            &c,
            "UPDATE b SET s = 'end' WHERE id = 2",
            Duration::from_secs(120),
        )
        .await?;

    let topics = counted(&m, &["a", "b"]).await?;
    assert!(topics["public.a"].snapshot_rows == 20000, "{topics:?}");
    assert!(
        topics["public.a"].inserts > 0
            && topics["public.a"].updates > 0
            && topics["public.a"].deletes > 0,
        "{topics:?}"
    );
    assert_eq!(cp.counts, topics, "checkpoint counts vs the topics");
    let total: u64 = topics.values().map(OpCounts::total).sum();
    assert_eq!(
        cp.next_vsn,
        Vsn(total + 1),
        "counts cover every VSN below next_vsn"
    );

    // A graceful stop stores the same counts.
    nix_term(&child)?;
    within("the exporter to exit", 60, child.wait()).await??;
    let last = checkpoint_of(&m, Stream::Source)
        .await?
        .context("no checkpoint")?;
    assert_eq!(last.counts, counted(&m, &["a", "b"]).await?);
    Ok(())
}

/// SIGTERM, the graceful stop of the binary.
fn nix_term(child: &tokio::process::Child) -> Result<()> {
    let pid = child.id().context("no pid")?;
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}
