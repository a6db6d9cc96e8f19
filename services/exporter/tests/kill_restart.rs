//! kill -9 of the exporter binary at random moments across snapshot and streaming,
//! restarting it each time, while a writer changes the source: the topics still rebuild
//! the source exactly, a change seen twice carries the same VSN both times, a VSN never
//! names two different events, and inside each partition every event either repeats an
//! earlier one (a replay) or has a VSN above all before it.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_shared::envelope::Op;
use ferry_shared::topics::Stream;
use ferry_shared::value::session_settings_sql;
use rand::Rng;

fn spawn_exporter(config_path: &std::path::Path) -> Result<tokio::process::Child> {
    Ok(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-exporter"))
            .arg("-c")
            .arg(config_path)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_at_random_moments_keeps_the_stream_exact() -> Result<()> {
    let m = Migration::new("kill", 3, "chunk_rows = 20000\nsnapshot_workers = 2").await?;
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, t text);
         CREATE TABLE small (id int PRIMARY KEY, n int);
         ALTER TABLE big REPLICA IDENTITY FULL;
         ALTER TABLE small REPLICA IDENTITY FULL;
         INSERT INTO big SELECT g, g % 100, 'r' || g FROM generate_series(1, 300000) g;
         INSERT INTO small SELECT g, 0 FROM generate_series(1, 100) g;",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, &m.toml)?;

    // A writer running through every kill.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let conn = ferry_testkit::Stack::get().source.connect(&m.db).await?;
        conn.batch_execute(&session_settings_sql()).await?;
        tokio::spawn(async move {
            let mut next = 1_000_000i64;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sql = {
                    let mut r = rand::rng();
                    let id = r.random_range(1..300_000i64);
                    let s = r.random_range(1..150);
                    next += 1;
                    match r.random_range(0..6) {
                        0 => format!("INSERT INTO big VALUES ({next}, 0, 'n')"),
                        1 => format!("UPDATE big SET v = v + 1 WHERE id = {id}"),
                        2 => format!("DELETE FROM big WHERE id = {id}"),
                        3 => format!("UPDATE big SET id = {next} WHERE id = {id}"),
                        4 => format!("INSERT INTO small VALUES ({s}, 1) ON CONFLICT (id) DO UPDATE SET n = small.n + 1"),
                        _ => format!("DELETE FROM small WHERE id = {s}"),
                    }
                };
                conn.batch_execute(&sql).await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(n)
        })
    };

    let kills = 12;
    for i in 0..kills {
        let mut child = spawn_exporter(&path)?;
        // The first kills land while snapshot chunks are being read (when a snapshot
        // is still running), later ones in streaming.
        let ms = if i < 4 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                let copying: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY%' AND state = 'active'",
                        &[],
                    )
                    .await?
                    .get(0);
                if copying > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            rand::rng().random_range(0..1500)
        } else {
            rand::rng().random_range(1000..6000)
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the exporter exited on its own ({status}) before kill {i}");
        }
        child.start_kill()?; // SIGKILL
        child.wait().await?;
    }
    stop.store(true, Ordering::Relaxed);
    let changes = writer.await??;
    assert!(changes > 500, "the writer made only {changes} changes");

    // A last run catches up, then stops cleanly.
    let mut child = spawn_exporter(&path)?;
    m.sync(
        &c,
        "UPDATE small SET n = -1 WHERE id = 1; INSERT INTO small VALUES (1000, 1)",
        Duration::from_secs(300),
    )
    .await?;
    let pid = child.id().unwrap_or_default();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let status = child.wait().await?;
    assert!(
        status.success(),
        "the exporter ended with {status} after SIGTERM"
    );

    let mut vsn_of_change: HashMap<String, u64> = HashMap::new();
    let mut event_of_vsn: HashMap<u64, String> = HashMap::new();
    let mut duplicates = 0usize;
    let mut redone_reads = 0usize;
    for table in ["big", "small"] {
        let topic = m.topics().table(Stream::Source, "public", table);
        let events = read_topic(&m, &topic).await?;
        // Per partition: a replayed event repeats an earlier one; anything else is above
        // every VSN before it.
        let mut by_partition: HashMap<i32, Vec<&Read>> = HashMap::new();
        for e in &events {
            by_partition.entry(e.partition).or_default().push(e);
        }
        for (p, mut list) in by_partition {
            list.sort_by_key(|e| e.offset);
            let mut max = 0u64;
            let mut seen: HashMap<u64, String> = HashMap::new();
            for e in list {
                let identity = format!(
                    "{:?}|{:?}|{:?}|{:?}|{}",
                    e.op, e.key, e.before, e.after, e.lsn
                );
                if e.vsn.0 <= max {
                    assert_eq!(
                        seen.get(&e.vsn.0),
                        Some(&identity),
                        "{topic}[{p}] offset {}: VSN {} is not above {max} and repeats no earlier event",
                        e.offset,
                        e.vsn
                    );
                    duplicates += 1;
                } else {
                    max = e.vsn.0;
                }
                seen.insert(e.vsn.0, identity);
            }
        }
        for e in &events {
            let identity = format!(
                "{topic}|{:?}|{:?}|{:?}|{:?}|{}",
                e.op, e.key, e.before, e.after, e.lsn
            );
            if let Some(other) = event_of_vsn.insert(e.vsn.0, identity.clone()) {
                assert_eq!(other, identity, "VSN {} names two different events", e.vsn);
            }
            if e.op == Op::Read {
                continue;
            }
            // A change (same commit, key, images) seen twice keeps its VSN.
            let change = format!("{identity}|{:?}", e.txid);
            if let Some(vsn) = vsn_of_change.insert(change, e.vsn.0) {
                assert_eq!(vsn, e.vsn.0, "a replayed change of {topic} got another VSN");
            }
        }
        redone_reads += events.iter().filter(|e| e.op == Op::Read).count();
        let rebuilt = rebuild(&events);
        let (_, source) = source_rows(&c, table).await?;
        assert_same(table, &source, &rebuilt);
    }
    println!("{kills} kills, {changes} source changes, {duplicates} replayed events, {redone_reads} snapshot rows produced");
    Ok(())
}
