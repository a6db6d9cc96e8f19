//! `ferry replay` against a real stream: the exporter and the built-in registry run
//! in-process over the local stack.
//!
//! - To a file: the lines equal, event for event, what decoding the topics directly
//!   gives (VSN, op, values), in strictly increasing VSN order; a start at a VSN, a time
//!   or offsets, and an end at a VSN, select exactly the events they name.
//! - Into a database: a `pg_dump` of the target taken while the pipeline runs, restored
//!   into a new database and replayed from the VSN the importer had applied at the dump,
//!   ends equal to the source row by row, across a replay killed mid-way and restarted,
//!   with every event applied exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_cli::replay::{self, ReplayOptions, ReplayTarget};
use ferry_shared::codec::EventDecoder;
use ferry_shared::config::Config;
use ferry_shared::json::JsonEvent;
use ferry_shared::position::Vsn;
use ferry_shared::replay::{EndAt, OffsetStart, StartAt};
use ferry_shared::shutdown::{self, Shutdown};
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_testkit::{free_port, unique_name, wait_until, Stack};

const DDL: &str = "
    CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric(12,2), data bytea,
                           at timestamptz, tags text[], note text, ok boolean);
    ALTER TABLE accounts REPLICA IDENTITY FULL;
    CREATE TABLE items (id int PRIMARY KEY, account bigint, qty int);
    ALTER TABLE items REPLICA IDENTITY FULL;
";

struct Fixture {
    config: Config,
    topics: Topics,
    source_db: String,
    target_db: String,
    trigger: shutdown::ShutdownTrigger,
    stop: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Source and target databases with [`DDL`], the coordinator (registry) and the source
/// exporter running.
async fn start(name: &str, seed: &str) -> Result<Fixture> {
    let stack = Stack::get();
    let source_db = stack.source.create_database(&format!("{name}_src")).await?;
    let target_db = stack.target.create_database(&format!("{name}_dst")).await?;
    let source = stack.source.connect(&source_db).await?;
    source.batch_execute(DDL).await?;
    source.batch_execute(seed).await?;
    stack
        .target
        .connect(&target_db)
        .await?
        .batch_execute(DDL)
        .await?;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut text = stack.config_toml(
        &unique_name(name),
        &source_db,
        &target_db,
        &target_db,
        &listen,
    );
    text = text.replace("[migration]\n", "[migration]\npartitions = 2\n");
    text.push_str("\n[importer]\nbatch_rows = 40\nbatch_max_ms = 50\n");
    let mut config = Config::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.source_replica = None;
    let topics = Topics::new(config.migration.topic_prefix());
    let (trigger, stop) = shutdown::channel();
    let mut tasks = Vec::new();
    let c = config.clone();
    let s = stop.clone();
    tasks.push(tokio::spawn(async move {
        ferry_coordinator::run(c, s).await.expect("coordinator");
    }));
    ferry_testkit::wait_listening(&listen, Duration::from_secs(90)).await?;
    let c = config.clone();
    let s = stop.clone();
    tasks.push(tokio::spawn(async move {
        ferry_exporter::run_for(Stream::Source, c, s)
            .await
            .expect("exporter");
    }));
    Ok(Fixture {
        config,
        topics,
        source_db,
        target_db,
        trigger,
        stop,
        tasks,
    })
}

impl Fixture {
    async fn finish(self) {
        self.trigger.trigger();
        for t in self.tasks {
            t.await.unwrap();
        }
    }

    fn topic(&self, table: &str) -> String {
        self.topics.table(Stream::Source, "public", table)
    }

    /// Every record of `table`'s topic decoded directly: (partition, offset, event),
    /// duplicates (same VSN) dropped.
    async fn decoded(&self, table: &str) -> Result<Vec<(i32, i64, JsonEvent)>> {
        let decoder = EventDecoder::new(replay::registry(&self.config)?);
        let kafka = self.config.kafka.client_config();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for r in ferry_shared::kafka::read_all(&kafka, &self.topic(table)).await? {
            let event = decoder
                .decode_event(r.value.as_deref().context("no value")?)
                .await?;
            let (ty, key) = decoder
                .decode_datum(r.key.as_deref().context("no key")?)
                .await?;
            let (
                ferry_shared::avro::AvroType::Record(layout),
                ferry_shared::value::Datum::Record(key),
            ) = (ty.as_ref(), key)
            else {
                panic!("key is not a record");
            };
            assert_eq!(
                ferry_shared::codec::framed_vsn(r.value.as_deref().unwrap()),
                Some(event.vsn),
                "the value starts with the event's vsn"
            );
            if seen.insert(event.vsn) {
                out.push((
                    r.partition,
                    r.offset,
                    JsonEvent::from_decoded(&event, layout, &key),
                ));
            }
        }
        Ok(out)
    }

    /// Waits until the topics of `tables` hold at least `events` distinct events.
    async fn wait_exported(&self, tables: &[&str], events: usize) -> Result<()> {
        wait_until(
            &format!("{events} events in the topics"),
            Duration::from_secs(120),
            || async {
                let mut n = 0;
                for t in tables {
                    n += self.decoded(t).await?.len();
                }
                Ok(Some(()).filter(|_| n >= events))
            },
        )
        .await
    }

    async fn replay_lines(&self, opts: &ReplayOptions) -> Result<Vec<JsonEvent>> {
        let mut out = Vec::new();
        let summary =
            replay::replay_to_writer(&self.config, opts, &mut out, "memory", self.stop.clone())
                .await?;
        assert!(summary.completed);
        let text = String::from_utf8(out)?;
        let events: Vec<JsonEvent> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(events.len() as u64, summary.events);
        Ok(events)
    }
}

fn opts(start: StartAt, end: EndAt) -> ReplayOptions {
    ReplayOptions {
        stream: Stream::Source,
        tables: Vec::new(),
        start,
        end,
    }
}

fn by_vsn(mut events: Vec<JsonEvent>) -> Vec<JsonEvent> {
    events.sort_by_key(|e| e.vsn);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_to_file_equals_the_topics_in_vsn_order_from_any_start() -> Result<()> {
    let fx = start(
        "rpl_file",
        "INSERT INTO accounts SELECT g, g * 1.25, '\\x0102'::bytea, '2024-02-29 12:00:00.5+00',
                ARRAY['a', NULL, 'c'], CASE WHEN g % 2 = 0 THEN NULL ELSE 'n' || g END, g % 3 = 0
           FROM generate_series(1, 60) g;
         INSERT INTO items SELECT g, g % 60 + 1, g FROM generate_series(1, 40) g;",
    )
    .await?;
    let source = Stack::get().source.connect(&fx.source_db).await?;
    fx.wait_exported(&["accounts", "items"], 100).await?;
    // Phase A: changes of every kind.
    source
        .batch_execute(
            "UPDATE accounts SET balance = balance + 1, note = 'u' WHERE id <= 10;
             DELETE FROM items WHERE id > 35;
             INSERT INTO items VALUES (100, 1, 7);",
        )
        .await?;
    fx.wait_exported(&["accounts", "items"], 100 + 10 + 5 + 1)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Phase B: after time t.
    source
        .batch_execute(
            "UPDATE items SET qty = -1 WHERE id <= 5; INSERT INTO items VALUES (101, 2, 8);",
        )
        .await?;
    fx.wait_exported(&["accounts", "items"], 116 + 6).await?;

    let mut expected: Vec<(i32, i64, JsonEvent)> = fx.decoded("accounts").await?;
    expected.extend(fx.decoded("items").await?);
    let all: Vec<JsonEvent> = by_vsn(expected.iter().map(|e| e.2.clone()).collect());
    assert_eq!(all.len(), 122);

    // Everything: equal event for event, strictly increasing VSNs.
    let lines = fx
        .replay_lines(&opts(StartAt::Beginning, EndAt::Now))
        .await?;
    assert!(
        lines.windows(2).all(|w| w[0].vsn < w[1].vsn),
        "not in vsn order"
    );
    assert_eq!(lines, all);

    // Readable values.
    let row = lines
        .iter()
        .find(|e| {
            e.op == "r"
                && e.table == "public.accounts"
                && e.key.get("id") == Some(&serde_json::json!(3))
        })
        .context("snapshot row of account 3")?;
    let after = row.after.as_ref().unwrap();
    assert_eq!(after.get("balance"), Some(&serde_json::json!("3.75")));
    assert_eq!(after.get("data"), Some(&serde_json::json!("\\x0102")));
    assert_eq!(
        after.get("at"),
        Some(&serde_json::json!("2024-02-29T12:00:00.500000Z"))
    );
    assert_eq!(
        after.get("tags"),
        Some(&serde_json::json!(["a", null, "c"]))
    );
    assert_eq!(after.get("ok"), Some(&serde_json::json!(true)));
    assert_eq!(after.get("note"), Some(&serde_json::json!("n3")));
    let names: Vec<&str> = after.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["id", "balance", "data", "at", "tags", "note", "ok"]);
    assert!(row.commit_ts.ends_with('Z') && row.commit_ts.contains('T'));
    let update = lines.iter().find(|e| e.op == "u").context("an update")?;
    assert!(update.before.is_some() && update.after.is_some());
    assert!(update.source.txid.is_some() && update.source.lsn_or_scn.contains('/'));

    // From a VSN, to a VSN.
    let from = all[50].vsn;
    let to = all[90].vsn;
    assert_eq!(
        fx.replay_lines(&opts(StartAt::Vsn(Vsn(from)), EndAt::Now))
            .await?,
        all[50..].to_vec()
    );
    assert_eq!(
        fx.replay_lines(&opts(StartAt::Vsn(Vsn(from)), EndAt::Vsn(Vsn(to))))
            .await?,
        all[50..=90].to_vec()
    );

    // From a time: exactly phase B.
    let from_t = fx
        .replay_lines(&opts(StartAt::TimeMs(t), EndAt::Now))
        .await?;
    assert_eq!(from_t, all[116..].to_vec());
    assert_eq!(
        fx.replay_lines(&opts(StartAt::Beginning, EndAt::TimeMs(t)))
            .await?,
        all[..116].to_vec()
    );

    // From offsets of one table (partition:offset), in that table's VSN order.
    let items: Vec<&(i32, i64, JsonEvent)> = expected
        .iter()
        .filter(|e| e.2.table == "public.items")
        .collect();
    let mut want: Vec<JsonEvent> = items
        .iter()
        .filter(|(p, o, _)| (*p == 0 && *o >= 3) || (*p == 1 && *o >= 5))
        .map(|e| e.2.clone())
        .collect();
    want = by_vsn(want);
    let mut o = opts(
        StartAt::Offsets(vec![
            "0:3".parse::<OffsetStart>().unwrap(),
            OffsetStart {
                topic: None,
                partition: 1,
                offset: 5,
            },
        ]),
        EndAt::Now,
    );
    o.tables = vec![replay::parse_table("public.items").unwrap()];
    assert_eq!(fx.replay_lines(&o).await?, want);

    // To a file, through the file path.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("out.jsonl");
    let summary = replay::replay_to_file(
        &fx.config,
        &opts(StartAt::Beginning, EndAt::Now),
        Some(&path),
        fx.stop.clone(),
    )
    .await?;
    assert_eq!(summary.events, 122);
    assert_eq!(ferry_cli::archive::read_archive(&path)?, all);

    // A producer retry after a crash writes events again with the same VSNs: replay
    // gives each event once, still in order.
    let kafka = fx.config.kafka.client_config();
    let topic = fx.topic("items");
    let records = ferry_shared::kafka::read_all(&kafka, &topic).await?;
    let producer: rdkafka::producer::FutureProducer = kafka.create()?;
    for r in records.iter().filter(|r| r.partition == 0).take(5) {
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: k,
                value: Some(v),
            });
        }
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .partition(0)
                    .key(r.key.as_deref().unwrap())
                    .payload(r.value.as_deref().unwrap())
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    assert_eq!(
        ferry_shared::kafka::read_all(&kafka, &topic).await?.len(),
        records.len() + 5
    );
    assert_eq!(
        fx.replay_lines(&opts(StartAt::Beginning, EndAt::Now))
            .await?,
        all
    );
    fx.finish().await;
    Ok(())
}

async fn fingerprint(client: &tokio_postgres::Client, table: &str) -> Result<(i64, String)> {
    let row = client
        .query_one(
            &format!("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY id)), '') FROM {table} t"),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_backup_replayed_from_its_vsn_equals_the_source_across_a_kill() -> Result<()> {
    let stack = Stack::get();
    let fx = start(
        "rpl_rec",
        "INSERT INTO accounts SELECT g, g, NULL, now(), NULL, 'seed', true FROM generate_series(1, 2000) g;
         INSERT INTO items SELECT g, g, g FROM generate_series(1, 2000) g;",
    )
    .await?;
    let importer = {
        let c = fx.config.clone();
        let s = fx.stop.clone();
        tokio::spawn(async move { ferry_importer::run_for(Destination::Target, c, s).await })
    };
    let source = stack.source.connect(&fx.source_db).await?;
    let target = stack.target.connect(&fx.target_db).await?;
    let load = |from: i64, n: i64| {
        let source = &source;
        async move {
            for i in from..from + n {
                source
                    .batch_execute(&format!(
                        "BEGIN;
                         UPDATE accounts SET balance = balance + 1, note = 'r{i}' WHERE id = {i} % 2000 + 1;
                         DELETE FROM items WHERE id = {i} % 1999 + 1;
                         INSERT INTO items VALUES ({i} + 10000, {i}, {i}) ON CONFLICT DO NOTHING;
                         COMMIT;"
                    ))
                    .await?;
            }
            anyhow::Ok(())
        }
    };
    load(0, 150).await?;
    // The importer is part-way: the backup is taken now, with the positions it holds.
    wait_until(
        "the importer to apply something",
        Duration::from_secs(120),
        || async {
            let n: i64 = target
                .query_one("SELECT count(*) FROM accounts", &[])
                .await?
                .get(0);
            Ok(Some(()).filter(|_| n > 0))
        },
    )
    .await?;
    let dump = tempfile::tempdir()?;
    let file = dump.path().join("target.dump");
    let t = &stack.target;
    let status = std::process::Command::new("pg_dump")
        .args([
            "-h",
            &t.host,
            "-p",
            &t.port.to_string(),
            "-U",
            &t.user,
            "-d",
            &fx.target_db,
            "-Fc",
            "-f",
        ])
        .arg(&file)
        .env("PGPASSWORD", &t.password)
        .status()?;
    assert!(status.success(), "pg_dump failed");
    load(150, 300).await?;

    let restore_db = t.create_database("rpl_restore").await?;
    let status = std::process::Command::new("pg_restore")
        .args([
            "-h",
            &t.host,
            "-p",
            &t.port.to_string(),
            "-U",
            &t.user,
            "-d",
            &restore_db,
            "--no-owner",
        ])
        .arg(&file)
        .env("PGPASSWORD", &t.password)
        .status()?;
    assert!(status.success(), "pg_restore failed");
    let restored = t.connect(&restore_db).await?;
    // The VSN the importer had applied at the backup: every partition's events up to
    // its last_vsn are in the backup, so replaying from the smallest one + 1 misses none.
    let group = fx.topics.import_group(Destination::Target);
    let applied: i64 = restored
        .query_one(
            "SELECT coalesce(min(last_vsn), 0) FROM ferry_metadata.positions WHERE consumer_group = $1",
            &[&group],
        )
        .await?
        .get(0);
    let from = Vsn(applied as u64 + 1);

    // The pipeline catches up; the source is then the truth.
    for table in ["accounts", "items"] {
        let expected = fingerprint(&source, table).await?;
        wait_until(
            &format!("{table} on the target"),
            Duration::from_secs(180),
            || async { Ok((fingerprint(&target, table).await? == expected).then_some(())) },
        )
        .await?;
    }
    assert!(!importer.is_finished());
    assert_ne!(
        fingerprint(&restored, "accounts").await?,
        fingerprint(&source, "accounts").await?
    );

    let mut db = fx.config.require_target()?.clone();
    db.database = restore_db.clone();
    let o = opts(StartAt::Vsn(from), EndAt::Now);
    // The kill must land part-way: small batches, and every row written costs the
    // restored database a millisecond, so that the whole range takes over a second
    // after the first batch is committed, on any machine.
    let mut small = fx.config.clone();
    small.importer.batch_rows = 20;
    restored
        .batch_execute(
            "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.001); RETURN NULL; END $$;
             CREATE TRIGGER slow AFTER INSERT OR UPDATE OR DELETE ON accounts
               FOR EACH ROW EXECUTE FUNCTION slow_row();
             CREATE TRIGGER slow AFTER INSERT OR UPDATE OR DELETE ON items
               FOR EACH ROW EXECUTE FUNCTION slow_row();
             -- It applies with session_replication_role = replica.
             ALTER TABLE accounts ENABLE ALWAYS TRIGGER slow;
             ALTER TABLE items ENABLE ALWAYS TRIGGER slow;",
        )
        .await?;
    // First run: killed once it has committed some batches.
    let first = {
        let (c, o, db) = (small.clone(), o.clone(), db.clone());
        let s = fx.stop.clone();
        tokio::spawn(async move {
            replay::replay_to_database(&c, &o, ReplayTarget::Database(db), "recover", s).await
        })
    };
    let replay_group = format!("{}.replay.recover", fx.topics.prefix());
    wait_until("the replay to commit a batch", Duration::from_secs(60), || async {
        let n: i64 = restored
            .query_one(
                "SELECT coalesce(sum(next_offset), 0)::bigint FROM ferry_metadata.positions WHERE consumer_group = $1",
                &[&replay_group],
            )
            .await?
            .get(0);
        Ok(Some(()).filter(|_| n > 0))
    })
    .await?;
    first.abort();
    let _ = first.await;
    let second = replay::replay_to_database(
        &small,
        &o,
        ReplayTarget::Database(db),
        "recover",
        fx.stop.clone(),
    )
    .await?;
    assert!(second.completed);
    assert!(second.events() > 0);
    for table in ["accounts", "items"] {
        assert_eq!(
            fingerprint(&restored, table).await?,
            fingerprint(&source, table).await?,
            "{table} differs after the replay"
        );
    }
    // Exactly once: the counts stored by both runs together equal the events in range.
    let mut in_range: BTreeMap<String, i64> = BTreeMap::new();
    for table in ["accounts", "items"] {
        let n = fx
            .decoded(table)
            .await?
            .iter()
            .filter(|e| e.2.vsn >= from.0)
            .count() as i64;
        in_range.insert(table.to_owned(), n);
    }
    let rows = restored
        .query(
            "SELECT table_name, (snapshot_rows + inserts + updates + deletes)::bigint FROM ferry_metadata.table_counts \
             WHERE consumer_group = $1 ORDER BY 1",
            &[&replay_group],
        )
        .await?;
    let stored: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(stored, in_range);
    // A third run with the same name finds nothing left to do.
    let mut db = fx.config.require_target()?.clone();
    db.database = restore_db.clone();
    let third = replay::replay_to_database(
        &fx.config,
        &o,
        ReplayTarget::Database(db),
        "recover",
        fx.stop.clone(),
    )
    .await?;
    assert!(third.completed);
    assert_eq!(third.events(), 0);
    fx.trigger.trigger();
    importer.await??;
    for t in fx.tasks {
        t.await?;
    }
    Ok(())
}
