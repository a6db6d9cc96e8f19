//! Reading a stream's retained events again (DESIGN.md §7): where to start and stop, the
//! per-partition offset ranges that follow from it, and one reader that returns the
//! records of many partitions merged into VSN order.
//!
//! Invariants the reader relies on and keeps:
//!
//! - Inside one partition, events are in VSN order, except that an exporter restarted
//!   from its checkpoint may write events again with the same VSNs (DESIGN.md §4a). So
//!   a record whose VSN is not above the last VSN taken from its partition is a
//!   duplicate and is skipped; what remains is strictly increasing per partition.
//! - A k-way merge of strictly increasing partitions gives the stream's total order.
//!   A partition's head is released only when every unfinished partition has one queued,
//!   so the output never goes backwards. Partitions whose queue is full are paused, so
//!   memory stays bounded whatever the skew between partitions.
//! - The VSN is read from the front of the value, where every envelope carries it as
//!   its first field ([`crate::codec::framed_vsn`]), so records are merged without
//!   their schemas. Records written before that layout carry it in a `ferry.vsn` header
//!   (8 bytes, big-endian), which is read first.
//! - Records removed from a partition while it is being read (retention, `ferry archive
//!   changes`) are an error, never a silent gap (`auto.offset.reset=error`).
//!
//! Times are Kafka record timestamps: when the exporter wrote the event to Kafka,
//! which follows the commit on the source by the stream's lag.

use std::str::FromStr;
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::catalog::{Kind, TableName};
use crate::kafka::{self, TIMEOUT};
use crate::position::Vsn;
use crate::topics::{Stream, Topics};
use crate::value::{parse_text, Datum};

mod merge;
pub use merge::MergedReader;

/// The Kafka header in which exporters before the VSN-first envelope wrote an event's
/// VSN (8 bytes, big-endian); still read, no longer written.
pub const VSN_HEADER: &str = "ferry.vsn";

/// Records queued over all partitions before a partition is paused: each partition gets
/// an equal share, within [`MIN_QUEUE`, `MAX_QUEUE`]. Pausing drops what librdkafka
/// had fetched ahead for the partition, so a small queue (2,000 per partition) paused
/// after every fetch and held the replay to a third of its speed.
const QUEUE_BUDGET: usize = 400_000;
const MIN_QUEUE: usize = 2_000;
const MAX_QUEUE: usize = 50_000;

/// The records one of `partitions` partitions may queue before it is paused.
fn queue_cap(partitions: usize) -> usize {
    (QUEUE_BUDGET / partitions.max(1)).clamp(MIN_QUEUE, MAX_QUEUE)
}
/// Records handed over per batch.
const BATCH: usize = 1_000;

/// Why reading a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A Kafka call failed.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    /// What was asked for does not fit the stream (unknown table, bad range).
    #[error("{0}")]
    Request(String),
    /// A record is not a Ferry event, or records disappeared while being read.
    #[error("{0}")]
    Stream(String),
}

fn kafka_err(what: impl Into<String>, e: KafkaError) -> ReadError {
    ReadError::Kafka(kafka::Error {
        what: what.into(),
        source: Some(e),
    })
}

/// Where a replay starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record of every partition.
    #[default]
    Beginning,
    /// The first event whose VSN is at least this one.
    Vsn(Vsn),
    /// The first record written at or after this time (ms since the epoch).
    TimeMs(i64),
    /// Explicit offsets; partitions not listed start at their oldest retained record.
    Offsets(Vec<OffsetStart>),
}

/// Where a replay stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EndAt {
    /// The end of every partition when the replay starts (its high watermark).
    #[default]
    Now,
    /// After the last event whose VSN is at most this one.
    Vsn(Vsn),
    /// Before the first record written at or after this time (ms since the epoch).
    TimeMs(i64),
}

/// An explicit start offset: `topic:partition:offset`, or `partition:offset` when one
/// table is replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetStart {
    /// The topic; `None` means the only topic replayed.
    pub topic: Option<String>,
    /// Partition.
    pub partition: i32,
    /// Offset of the first record to read.
    pub offset: i64,
}

impl FromStr for OffsetStart {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("{s:?} is not a start offset; write topic:partition:offset, or partition:offset for a single table")
        };
        let mut parts = s.rsplitn(3, ':');
        let offset = parts.next().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
        let partition = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let topic = parts.next().map(str::to_owned);
        if offset < 0 || partition < 0 || topic.as_deref() == Some("") {
            return Err(bad());
        }
        Ok(OffsetStart {
            topic,
            partition,
            offset,
        })
    }
}

/// Reads a time given as milliseconds since the epoch or as RFC 3339
/// (`2025-01-02T03:04:05.5Z`, `2025-01-02 03:04:05+02:00`; no zone means UTC).
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        format!("{text:?} is not a time; write RFC 3339 (2025-01-02T03:04:05Z) or milliseconds since 1970")
    };
    let mut s = t.replacen(['T', 't'], " ", 1);
    if let Some(body) = s.strip_suffix(['Z', 'z']) {
        s = format!("{body}+00");
    }
    let has_zone = s
        .rsplit_once(' ')
        .is_some_and(|(_, time)| time.contains(['+', '-']));
    if !has_zone {
        s.push_str("+00");
    }
    match parse_text(&Kind::TimestampTz, &s) {
        Ok(Datum::TimestampTz(micros)) => Ok(micros.div_euclid(1000)),
        _ => Err(bad()),
    }
}

/// Which topics of a migration a replay reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The stream.
    pub stream: Stream,
    /// Tables; empty means every table topic of the stream.
    pub tables: Vec<TableName>,
}

impl Selection {
    /// The selected topics, sorted; an error names a table without a topic.
    pub async fn topics(
        &self,
        kafka: &ClientConfig,
        topics: &Topics,
    ) -> Result<Vec<String>, ReadError> {
        let stream_prefix = format!("{}.{}.", topics.prefix(), self.stream);
        let existing = kafka::list_topics(kafka, &stream_prefix).await?;
        if self.tables.is_empty() {
            return Ok(existing);
        }
        let mut out = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let topic = topics.table(self.stream, &t.schema, &t.name);
            if !existing.contains(&topic) {
                return Err(ReadError::Request(format!(
                    "table {t} has no topic in the {} stream (expected {topic}); check the table name (schema.table) and the stream",
                    self.stream
                )));
            }
            out.push(topic);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Reads `schema.table` (or `table`, in schema `public`).
pub fn parse_table(text: &str) -> Result<TableName, String> {
    let (schema, name) = text.split_once('.').unwrap_or(("public", text));
    if schema.is_empty() || name.is_empty() {
        return Err(format!("{text:?} is not a table name; write schema.table"));
    }
    Ok(TableName {
        schema: schema.to_owned(),
        name: name.to_owned(),
    })
}

/// The records of one partition a replay reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRange {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub from: i64,
    /// Offset to stop before.
    pub to: i64,
    /// Events below this VSN are skipped (a VSN start).
    pub min_vsn: Vsn,
    /// The partition ends at the first event above this VSN (a VSN end).
    pub max_vsn: Option<Vsn>,
    /// Events at or below this VSN were taken already (duplicates, or applied before a
    /// restart) and are skipped.
    pub taken_through: Vsn,
}

impl PartitionRange {
    /// Records in the offset range (an upper bound of the events read).
    pub fn len(&self) -> u64 {
        u64::try_from(self.to - self.from).unwrap_or(0)
    }

    /// True when the range holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The offset ranges of `topics` from `start` to `end`, every partition included (empty
/// ranges too, so that callers see every partition).
pub async fn plan(
    kafka: &ClientConfig,
    topics: &[String],
    start: &StartAt,
    end: &EndAt,
) -> Result<Vec<PartitionRange>, ReadError> {
    if let StartAt::Offsets(list) = start {
        for o in list {
            match &o.topic {
                Some(t) if !topics.contains(t) => {
                    return Err(ReadError::Request(format!(
                        "start offset {}:{}:{} names a topic that is not replayed",
                        t, o.partition, o.offset
                    )))
                }
                None if topics.len() != 1 => {
                    return Err(ReadError::Request(format!(
                        "start offset {}:{} names no topic, but {} topics are replayed; write topic:partition:offset",
                        o.partition,
                        o.offset,
                        topics.len()
                    )))
                }
                _ => {}
            }
        }
    }
    let config = config_for_reading(kafka);
    let topics = topics.to_vec();
    let start = start.clone();
    let end = end.clone();
    tokio::task::spawn_blocking(move || plan_blocking(&config, &topics, &start, &end))
        .await
        .map_err(|e| ReadError::Stream(format!("planning task failed: {e}")))?
}

fn config_for_reading(kafka: &ClientConfig) -> ClientConfig {
    let mut c = kafka.clone();
    c.set("group.id", "ferry-replay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed");
    // Tuning, unless `[kafka.properties]` sets it.
    for (key, value) in [
        ("queued.max.messages.kbytes", kafka::CONSUMER_QUEUE_KBYTES),
        ("fetch.queue.backoff.ms", kafka::FETCH_QUEUE_BACKOFF_MS),
    ] {
        if c.get(key).is_none() {
            c.set(key, value);
        }
    }
    c
}

fn plan_blocking(
    config: &ClientConfig,
    topics: &[String],
    start: &StartAt,
    end: &EndAt,
) -> Result<Vec<PartitionRange>, ReadError> {
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| kafka_err("creating a kafka consumer", e))?;
    let mut out = Vec::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| kafka_err(format!("reading metadata of topic {topic}"), e))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        let mut marks = Vec::with_capacity(n as usize);
        for p in 0..n {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(|e| kafka_err(format!("reading watermarks of {topic}[{p}]"), e))?;
            marks.push((low, high));
        }
        let from_times = |ms: i64| -> Result<Vec<i64>, ReadError> {
            let mut tpl = TopicPartitionList::new();
            for p in 0..n {
                tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                    .map_err(|e| kafka_err("building a time query", e))?;
            }
            let found = consumer
                .offsets_for_times(tpl, TIMEOUT)
                .map_err(|e| kafka_err(format!("finding offsets by time in {topic}"), e))?;
            (0..n)
                .map(|p| {
                    let high = marks[p as usize].1;
                    Ok(match found.find_partition(topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) if o >= 0 => o,
                        _ => high, // nothing written at or after that time
                    })
                })
                .collect()
        };
        let starts: Vec<i64> = match start {
            StartAt::Beginning | StartAt::Vsn(_) => marks.iter().map(|m| m.0).collect(),
            StartAt::TimeMs(ms) => from_times(*ms)?,
            StartAt::Offsets(list) => (0..n)
                .map(|p| {
                    list.iter()
                        .find(|o| o.partition == p && o.topic.as_deref().is_none_or(|t| t == topic))
                        .map_or(marks[p as usize].0, |o| o.offset)
                })
                .collect(),
        };
        let ends: Vec<i64> = match end {
            EndAt::Now | EndAt::Vsn(_) => marks.iter().map(|m| m.1).collect(),
            EndAt::TimeMs(ms) => from_times(*ms)?,
        };
        for p in 0..n {
            let (low, high) = marks[p as usize];
            let to = ends[p as usize].clamp(low, high);
            out.push(PartitionRange {
                topic: topic.clone(),
                partition: p,
                from: starts[p as usize].clamp(low, to),
                to,
                min_vsn: match start {
                    StartAt::Vsn(v) => *v,
                    _ => Vsn::ZERO,
                },
                max_vsn: match end {
                    EndAt::Vsn(v) => Some(*v),
                    _ => None,
                },
                taken_through: Vsn::ZERO,
            });
        }
    }
    Ok(out)
}

/// One record read back, with its VSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp (ms since the epoch), when the record has one.
    pub timestamp_ms: Option<i64>,
    /// The event's VSN ([`record_vsn`]).
    pub vsn: Vsn,
    /// Key bytes (Confluent-framed Avro).
    pub key: Option<Vec<u8>>,
    /// Value bytes (Confluent-framed Avro).
    pub value: Option<Vec<u8>>,
}

/// The VSN of a table topic's record, from its `ferry.vsn` header (`header`: that
/// header's value, on records of earlier exporters) or else from the front of its value.
pub fn record_vsn(header: Option<&[u8]>, value: Option<&[u8]>) -> Option<Vsn> {
    if let Some(h) = header {
        let bytes: [u8; 8] = h.try_into().ok()?;
        return Some(Vsn(u64::from_be_bytes(bytes)));
    }
    crate::codec::framed_vsn(value?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_readers_tuning_gives_way_to_kafka_properties() {
        let ours = config_for_reading(&rdkafka::ClientConfig::new());
        assert_eq!(ours.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(ours.get("fetch.queue.backoff.ms"), Some("10"));
        let mut set = rdkafka::ClientConfig::new();
        set.set("queued.max.messages.kbytes", "4096")
            .set("fetch.queue.backoff.ms", "250")
            .set("isolation.level", "read_uncommitted");
        let theirs = config_for_reading(&set);
        assert_eq!(theirs.get("queued.max.messages.kbytes"), Some("4096"));
        assert_eq!(theirs.get("fetch.queue.backoff.ms"), Some("250"));
        assert_eq!(theirs.get("isolation.level"), Some("read_committed"));
    }

    #[test]
    fn a_records_vsn_comes_from_an_old_header_else_from_the_value() {
        // framing (magic 0, schema id 7), then vsn 42 as an Avro long (zigzag 84).
        let value = [0u8, 0, 0, 0, 7, 84, 0];
        assert_eq!(record_vsn(None, Some(&value)), Some(Vsn(42)));
        assert_eq!(
            record_vsn(Some(&9u64.to_be_bytes()), Some(&value)),
            Some(Vsn(9))
        );
        assert_eq!(record_vsn(Some(&[1, 2]), Some(&value)), None);
        assert_eq!(record_vsn(None, None), None);
        assert_eq!(record_vsn(None, Some(&[1, 0, 0, 0, 7, 84])), None);
    }

    #[test]
    fn each_partition_queues_a_share_of_the_budget_within_bounds() {
        assert_eq!(queue_cap(0), MAX_QUEUE);
        assert_eq!(queue_cap(4), MAX_QUEUE);
        assert_eq!(queue_cap(40), 10_000);
        assert_eq!(queue_cap(1_000), MIN_QUEUE);
    }

    #[test]
    fn offsets_and_times_parse() {
        assert_eq!(
            "a.b.c:2:10".parse::<OffsetStart>().unwrap(),
            OffsetStart {
                topic: Some("a.b.c".into()),
                partition: 2,
                offset: 10
            }
        );
        assert_eq!(
            "3:0".parse::<OffsetStart>().unwrap(),
            OffsetStart {
                topic: None,
                partition: 3,
                offset: 0
            }
        );
        for bad in ["", "1", "x:1", "t:-1:0", ":1:2", "t:1:x"] {
            assert!(bad.parse::<OffsetStart>().is_err(), "{bad:?}");
        }
        assert_eq!(parse_time_ms("1500").unwrap(), 1500);
        assert_eq!(parse_time_ms("1970-01-01T00:00:01.5Z").unwrap(), 1500);
        assert_eq!(parse_time_ms("1970-01-01 01:00:01+01:00").unwrap(), 1000);
        assert_eq!(parse_time_ms("1970-01-01T00:00:02").unwrap(), 2000);
        assert!(parse_time_ms("yesterday").is_err());
        assert_eq!(
            parse_table("s.t").unwrap(),
            TableName {
                schema: "s".into(),
                name: "t".into()
            }
        );
        assert_eq!(parse_table("t").unwrap().schema, "public");
        assert!(parse_table(".t").is_err());
    }
}
