//! `ferry archive changes` against a real pipeline: only events the importer applied
//! leave the topics, the files hold exactly the removed events (and read back to the
//! same events a replay gives), the importer resumes and catches up afterwards, and a
//! configured destination whose importer never ran blocks everything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_cli::archive::{self, ArchiveMode, ArchiveOptions};
use ferry_cli::replay;
use ferry_shared::codec::EventDecoder;
use ferry_shared::config::Config;
use ferry_shared::json::JsonEvent;
use ferry_shared::replay::RetainedRecord;
use ferry_shared::shutdown;
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_testkit::{free_port, unique_name, wait_until, Stack};

const DDL: &str = "
    CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric(12,2), note text);
    ALTER TABLE accounts REPLICA IDENTITY FULL;
";

async fn fingerprint(client: &tokio_postgres::Client) -> Result<(i64, String)> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY id)), '') FROM accounts t",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Every record of `topic` as (partition, offset) -> event.
async fn events_by_offset(config: &Config, topic: &str) -> Result<BTreeMap<(i32, i64), JsonEvent>> {
    let decoder = EventDecoder::new(replay::registry(config)?);
    let mut out = BTreeMap::new();
    for r in ferry_shared::kafka::read_all(&config.kafka.client_config(), topic).await? {
        let record = RetainedRecord {
            topic: topic.into(),
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: None,
            vsn: Default::default(),
            key: r.key,
            value: r.value,
        };
        let e = replay::to_json(&decoder, &record)
            .await?
            .context("a value")?;
        out.insert((r.partition, r.offset), e);
    }
    Ok(out)
}

async fn positions(target: &tokio_postgres::Client, group: &str) -> Result<HashMap<i32, i64>> {
    Ok(target
        .query(
            "SELECT partition, next_offset FROM ferry_metadata.positions WHERE consumer_group = $1",
            &[&group],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_moves_only_applied_events_and_the_importer_carries_on() -> Result<()> {
    let stack = Stack::get();
    let source_db = stack.source.create_database("arc_src").await?;
    let target_db = stack.target.create_database("arc_dst").await?;
    let replica_db = stack.source_replica.create_database("arc_rep").await?;
    let source = stack.source.connect(&source_db).await?;
    let target = stack.target.connect(&target_db).await?;
    source.batch_execute(DDL).await?;
    target.batch_execute(DDL).await?;
    source
        .batch_execute("INSERT INTO accounts SELECT g, g, 'seed' FROM generate_series(1, 300) g")
        .await?;
    let listen = format!("127.0.0.1:{}", free_port());
    let text = stack
        .config_toml(
            &unique_name("arc"),
            &source_db,
            &target_db,
            &replica_db,
            &listen,
        )
        .replace("[migration]\n", "[migration]\npartitions = 2\n");
    let with_replica = Config::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = with_replica.clone();
    config.source_replica = None;
    let topics = Topics::new(config.migration.topic_prefix());
    let topic = topics.table(Stream::Source, "public", "accounts");
    let group = topics.import_group(Destination::Target);
    let kafka = config.kafka.client_config();

    let (trigger, stop) = shutdown::channel();
    let coordinator = tokio::spawn(ferry_coordinator::run(config.clone(), stop.clone()));
    ferry_testkit::wait_listening(&listen, Duration::from_secs(90)).await?;
    let exporter = tokio::spawn(ferry_exporter::run_for(
        Stream::Source,
        config.clone(),
        stop.clone(),
    ));
    let (stop_importer, importer_stop) = shutdown::channel();
    let importer = tokio::spawn(ferry_importer::run_for(
        Destination::Target,
        config.clone(),
        importer_stop,
    ));

    source
        .batch_execute("UPDATE accounts SET balance = balance * 2 WHERE id <= 100; DELETE FROM accounts WHERE id > 280;")
        .await?;
    let expected = fingerprint(&source).await?;
    wait_until(
        "the target to catch up",
        Duration::from_secs(120),
        || async { Ok((fingerprint(&target).await? == expected).then_some(())) },
    )
    .await?;
    // The importer stops; more changes arrive that it has not applied.
    stop_importer.trigger();
    importer.await??;
    source
        .batch_execute("UPDATE accounts SET note = 'later' WHERE id <= 50; INSERT INTO accounts VALUES (1000, 1, 'new');")
        .await?;
    wait_until(
        "the later changes in the topic",
        Duration::from_secs(60),
        || async {
            // The insert is the last change; the exporter sends in commit order.
            let events = events_by_offset(&config, &topic).await?;
            Ok(events
                .values()
                .any(|e| e.op == "c" && e.key.get("id") == Some(&serde_json::json!(1000)))
                .then_some(()))
        },
    )
    .await?;
    let before = events_by_offset(&config, &topic).await?;
    let applied = positions(&target, &group).await?;
    let marks = ferry_shared::kafka::watermarks(&kafka, &topic).await?;

    // A configured source-replica whose importer never ran keeps everything.
    let blocked = archive::archive_changes(
        &with_replica,
        &ArchiveOptions {
            mode: ArchiveMode::Delete,
            streams: vec![Stream::Source],
            dry_run: false,
        },
    )
    .await?;
    assert!(blocked.topics.is_empty(), "{}", blocked.render());
    assert!(
        blocked.notes.iter().any(|n| n.contains("source-replica")),
        "{:?}",
        blocked.notes
    );
    assert_eq!(
        ferry_shared::kafka::watermarks(&kafka, &topic).await?,
        marks
    );

    // Move what the target applied.
    let dir = tempfile::tempdir()?;
    let report = archive::archive_changes(
        &config,
        &ArchiveOptions {
            mode: ArchiveMode::MoveTo(dir.path().to_path_buf()),
            streams: Vec::new(),
            dry_run: false,
        },
    )
    .await?;
    println!("{}", report.render());
    assert_eq!(report.topics.len(), 1);
    let moved = &report.topics[0];
    assert_eq!(moved.topic, topic);
    let after = ferry_shared::kafka::watermarks(&kafka, &topic).await?;
    let mut removed = BTreeMap::new();
    for (p, (low, high)) in after.iter().enumerate() {
        let p = p as i32;
        let next = applied[&p];
        // Exactly the applied records went, except each partition's last record.
        assert_eq!(*low, next.min(high - 1), "partition {p}");
        assert_eq!(*high, marks[p as usize].1);
        assert!(*low < *high);
        for ((rp, ro), e) in &before {
            if *rp == p && *ro < *low {
                removed.insert(e.vsn, e.clone());
            }
        }
    }
    assert!(!removed.is_empty());
    assert!(removed.len() < before.len(), "unapplied events must stay");
    // The file holds exactly the removed events, in VSN order, with their coordinates.
    let files = archive::archive_files(dir.path())?;
    assert_eq!(files, vec![moved.file.clone().unwrap()]);
    let archived = archive::read_archive(&files[0])?;
    assert_eq!(archived.len() as u64, moved.events);
    for e in &archived {
        let (p, o) = (e.partition.unwrap(), e.offset.unwrap());
        assert_eq!(before[&(p, o)], e.clone().without_coordinates());
    }
    let archived: Vec<JsonEvent> = archived
        .into_iter()
        .map(JsonEvent::without_coordinates)
        .collect();
    assert_eq!(archived, removed.into_values().collect::<Vec<_>>());

    // The importer starts again and catches up.
    source
        .batch_execute("UPDATE accounts SET note = 'last' WHERE id = 1000")
        .await?;
    let importer = tokio::spawn(ferry_importer::run_for(
        Destination::Target,
        config.clone(),
        stop.clone(),
    ));
    let expected = fingerprint(&source).await?;
    wait_until(
        "the target to catch up after the archive",
        Duration::from_secs(120),
        || async { Ok((fingerprint(&target).await? == expected).then_some(())) },
    )
    .await?;
    // Now everything applied goes, with --delete; each partition keeps its last record.
    let marks = ferry_shared::kafka::watermarks(&kafka, &topic).await?;
    let applied = positions(&target, &group).await?;
    let report = archive::archive_changes(
        &config,
        &ArchiveOptions {
            mode: ArchiveMode::Delete,
            streams: vec![Stream::Source],
            dry_run: false,
        },
    )
    .await?;
    assert!(report.topics.iter().all(|t| t.file.is_none()));
    for (p, (low, high)) in ferry_shared::kafka::watermarks(&kafka, &topic)
        .await?
        .iter()
        .enumerate()
    {
        assert_eq!(*high, marks[p].1);
        assert_eq!(*low, applied[&(p as i32)].min(high - 1));
    }
    trigger.trigger();
    importer.await??;
    exporter.await??;
    coordinator.await??;
    Ok(())
}
