//! The replay phase (issue #19): `ferry replay`, the audit path, reading a stream's
//! topics back, against a plain consumer reading the same records without decoding.
//!
//! The exporter puts `--replay-rows` snapshot rows into Kafka and stops (the coordinator
//! stays up: the replay decodes with its registry). Then, one after the other, on the
//! same records:
//!
//! 1. the reference: one librdkafka consumer reading every partition of the stream from
//!    its start to its end, counting records and decoding nothing;
//! 2. `ferry replay` to a JSON-lines file (what `ferry replay --to-file` runs), target
//!    ≥ 500k events/s, printed with its ratio to the reference;
//! 3. `ferry replay` into a fresh database (what `ferry replay --to-database` runs);
//! 4. the importer applying the same topics into another fresh database: the speed the
//!    replay into a database is held to (≥ 0.90 ×).
//!
//! Both databases must then equal the source (count and checksum), and the file must hold
//! one line per record.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_cli::replay::{ReplayOptions, ReplayTarget};
use ferry_shared::replay::{EndAt, StartAt};
use ferry_shared::topics::Stream;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::db::{self, Checksum};
use crate::phases::{verify, wait_applied, wait_exported, with_phase, Ctx, Phase};
use crate::usage::{CpuMark, Usage};

/// The replay phase's figures.
#[derive(Debug, Serialize)]
pub struct ReplayResult {
    pub events: i64,
    /// The plain consumer (no decoding).
    pub plain_seconds: f64,
    pub plain_events_per_second: f64,
    pub file_seconds: f64,
    pub file_events_per_second: f64,
    pub file_bytes: u64,
    pub file_usage: Usage,
    pub database_seconds: f64,
    pub database_events_per_second: f64,
    pub database_usage: Usage,
    /// The importer applying the same records (from its start to the last row applied).
    pub importer_seconds: f64,
    pub importer_events_per_second: f64,
    pub checksum: Checksum,
}

/// Replay: `rows` snapshot events read back by a plain consumer, replayed to a file and
/// into a database, and applied by the importer.
pub async fn replay(ctx: &Ctx, rows: i64) -> Result<ReplayResult> {
    with_phase(async |p: &mut Phase| {
        let (src, dsts) = p
            .filled(
                ctx,
                "replay",
                ("bench_replay_src", rows),
                &["bench_replay_dst", "bench_replay_into"],
                db::TARGET_DDL,
            )
            .await?;
        let (dst, into) = (dsts[0], dsts[1]);

        ctx.say("replay: the exporter puts them into Kafka");
        p.start_ferry(ctx, src, dst).await?;
        let since = Instant::now();
        let ferry = p.ferry()?;
        ferry.start_exporter();
        wait_exported(ctx, ferry, "t", 0, rows, since).await?;
        ferry.stop_exporter().await?;
        let config = ferry.config.clone();
        let opts = ReplayOptions {
            stream: Stream::Source,
            tables: Vec::new(),
            start: StartAt::Beginning,
            end: EndAt::Now,
        };
        let ranges = ferry_cli::replay::ranges(&config, &opts).await?;
        let records: u64 = ranges.iter().map(|r| r.len()).sum();

        ctx.say(&format!("replay: a plain consumer reads the {records} records"));
        let kafka = config.kafka.client_config();
        let parts: Vec<(String, i32, i64, i64)> = ranges
            .iter()
            .map(|r| (r.topic.clone(), r.partition, r.from, r.to))
            .collect();
        let started = Instant::now();
        let read = tokio::task::spawn_blocking(move || plain_read(&kafka, &parts, |_| {})).await??;
        let plain_seconds = started.elapsed().as_secs_f64();
        if read != records {
            bail!("the plain consumer read {read} records, the partitions hold {records}");
        }

        ctx.say("replay: ferry replay to a JSON-lines file");
        let path = std::env::temp_dir().join(format!(
            "{}.jsonl",
            ferry_testkit::unique_name("bench_replay")
        ));
        let (_stop, shutdown) = ferry_shared::shutdown::channel();
        let mark = CpuMark::start()?;
        let started = Instant::now();
        let file = {
            let (config, opts, path) = (config.clone(), opts.clone(), path.clone());
            ctx.handles
                .verb()
                .spawn(async move {
                    ferry_cli::replay::replay_to_file(&config, &opts, Some(&path), shutdown).await
                })
                .await?
        };
        let file_seconds = started.elapsed().as_secs_f64();
        let file_usage = mark.finish()?;
        let lines = count_lines(&path);
        let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&path);
        let file = file.context("ferry replay to a file")?;
        let lines = lines?;
        if !file.completed || file.events != records || lines != records {
            bail!(
                "ferry replay to a file wrote {} events ({lines} lines, completed: {}), the partitions hold {records} records",
                file.events,
                file.completed
            );
        }

        ctx.say("replay: ferry replay into a database");
        let mut to = config.require_target()?.clone();
        to.database = p.dbs[into].name.clone();
        let (_stop, shutdown) = ferry_shared::shutdown::channel();
        let mark = CpuMark::start()?;
        let started = Instant::now();
        let applied = {
            let (config, opts) = (config.clone(), opts.clone());
            ctx.handles
                .verb()
                .spawn(async move {
                    ferry_cli::replay::replay_to_database(
                        &config,
                        &opts,
                        ReplayTarget::Database(to),
                        "bench",
                        shutdown,
                    )
                    .await
                })
                .await?
        }
        .context("ferry replay into a database")?;
        let database_seconds = started.elapsed().as_secs_f64();
        let database_usage = mark.finish()?;
        if applied.events() != records {
            bail!(
                "ferry replay into a database applied {} events, the partitions hold {records} records",
                applied.events()
            );
        }

        ctx.say("replay: the importer applies the same records");
        let target = p.dbs[dst].connect().await?;
        let ferry = p.ferry()?;
        let since = Instant::now();
        ferry.start_importer_after_topic("t").await?;
        let (importer_seconds, _) = wait_applied(
            ctx,
            ferry,
            &target,
            since,
            "the importer's snapshot rows",
            |c| c.0 >= rows,
            |c| c.0 > 0,
        )
        .await?;
        ferry.stop().await?;

        ctx.say("replay: checksums");
        let (checksum, replayed) = tokio::try_join!(
            verify(&p.dbs[src], &p.dbs[dst]),
            verify(&p.dbs[src], &p.dbs[into])
        )?;
        if checksum.rows != rows || replayed != checksum {
            bail!(
                "the source holds {} rows, expected {rows}, or the replayed database differs",
                checksum.rows
            );
        }
        let per_second = |secs: f64| records as f64 / secs.max(1e-9);
        Ok(ReplayResult {
            events: i64::try_from(records).unwrap_or(i64::MAX),
            plain_seconds,
            plain_events_per_second: per_second(plain_seconds),
            file_seconds,
            file_events_per_second: per_second(file_seconds),
            file_bytes,
            file_usage,
            database_seconds,
            database_events_per_second: per_second(database_seconds),
            database_usage,
            importer_seconds,
            importer_events_per_second: per_second(importer_seconds),
            checksum,
        })
    })
    .await
}

/// Reads every `(topic, partition, from, to)` from `from` up to `to` (exclusive) with one
/// consumer, handing each record to `each` (the replay's reference decodes nothing):
/// the records read.
pub(crate) fn plain_read(
    kafka: &ClientConfig,
    parts: &[(String, i32, i64, i64)],
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<u64> {
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", ferry_testkit::unique_name("bench_plain"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // As the replay's reader: librdkafka's 1 s default wait when its queue is full
        // would hold the reference to a fraction of what the broker serves.
        .set(
            "fetch.queue.backoff.ms",
            ferry_shared::kafka::FETCH_QUEUE_BACKOFF_MS,
        )
        .create()
        .context("creating the plain consumer")?;
    let mut tpl = TopicPartitionList::new();
    let mut left = 0usize;
    let mut ends = std::collections::HashMap::new();
    for (topic, partition, from, to) in parts {
        if to > from {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*from))?;
            ends.insert((topic.clone(), *partition), *to);
            left += 1;
        }
    }
    consumer.assign(&tpl)?;
    let mut read = 0u64;
    let deadline = Instant::now() + Duration::from_secs(3600);
    while left > 0 {
        if Instant::now() > deadline {
            bail!("the plain consumer did not reach the end within an hour ({read} read)");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => bail!("the plain consumer: {e}"),
            Some(Ok(m)) => {
                use rdkafka::Message;
                read += 1;
                each(&m);
                let key = (m.topic().to_owned(), m.partition());
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                    left -= 1;
                }
            }
        }
    }
    Ok(read)
}

/// Lines in the file at `path`.
fn count_lines(path: &std::path::Path) -> Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("reading the replay file {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}
