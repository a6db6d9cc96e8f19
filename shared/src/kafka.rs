//! Kafka plumbing shared by the services: topic creation, the idempotent producer's
//! settings, Java-compatible key partitioning, watermarks, reading the last record of a
//! partition and reading a compacted topic to its end.
//!
//! Blocking librdkafka calls (metadata, watermarks, consumer polls) run in
//! `spawn_blocking`, so these functions are safe to call from async code.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// How long metadata and admin calls may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka's `fetch.queue.backoff.ms` for consumers that read a backlog: when its
/// local queue is over `queued.min.messages` or `queued.max.messages.kbytes`, librdkafka
/// fetches nothing more for this long (1 s by default). A reader that drains the queue in
/// less than that then waits for the rest of the second with nothing to do: the replay
/// spent about half its time so (docs/benchmarks.md, "`ferry replay`").
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// librdkafka's `queued.max.messages.kbytes` for consumers that read a backlog (the
/// importer, the replay): 16 MiB of prefetched records instead of 64. Such a reader's
/// queue is full for as long as the backlog lasts, and each queued record also holds
/// librdkafka's bookkeeping and its share of a fetch's buffers, so the default cost a
/// snapshot tens of MiB of peak RSS for no speed (docs/benchmarks.md).
pub const CONSUMER_QUEUE_KBYTES: &str = "16384";

/// A Kafka operation that failed, naming what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Error {
    /// What was being done (lowercase, no period).
    pub what: String,
    /// The client's error.
    #[source]
    pub source: Option<KafkaError>,
}

impl Error {
    fn new(what: impl Into<String>, source: KafkaError) -> Self {
        Error {
            what: what.into(),
            source: Some(source),
        }
    }

    /// An error with no underlying cause: `what` says what went wrong.
    pub fn msg(what: impl Into<String>) -> Self {
        Error {
            what: what.into(),
            source: None,
        }
    }

    /// Its class under the one error policy ([`crate::error_policy::classify_kafka`]);
    /// an error without a client error (a topic not in the metadata yet, a read that
    /// took too long, a task that failed) is transient.
    pub fn class(&self) -> crate::error_policy::ErrorClass {
        self.source.as_ref().map_or(
            crate::error_policy::ErrorClass::Transient,
            crate::error_policy::classify_kafka,
        )
    }
}

/// Logs an error librdkafka reports for a client as a whole, at the level it deserves
/// (librdkafka's default puts every one at ERROR): the end of a partition (a tail asked
/// to be told) and a missing topic at DEBUG (a stream's
/// topics appear when its exporter starts and go with `ferry end migration
/// --delete-topics`; a consumer subscribed to them waits, which its service reports
/// itself), a broker out of reach at WARN (clients retry), anything else at ERROR.
pub fn log_client_error(error: &KafkaError, reason: &str) {
    let code = match error {
        KafkaError::Global(code) => Some(*code),
        _ => error.rdkafka_error_code(),
    };
    match code {
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::PartitionEOF,
        ) => tracing::debug!(target: "librdkafka", "{error}: {reason}"),
        Some(
            RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut,
        ) => tracing::warn!(target: "librdkafka", "{error}: {reason}"),
        _ => tracing::error!(target: "librdkafka", "{error}: {reason}"),
    }
}

/// A client context that logs librdkafka's errors with [`log_client_error`].
#[derive(Clone, Copy, Debug, Default)]
pub struct QuietContext;

impl rdkafka::client::ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Whether a consumer's error only says that a topic does not exist (yet, or any more).
pub fn is_missing_topic(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

/// The specs of a migration's `_state` and `_status` topics: one partition each,
/// compacted (created by the coordinator and by every exporter, whichever starts first).
pub fn state_topic_specs(topics: &crate::topics::Topics, replication: i32) -> Vec<TopicSpec> {
    [topics.state(), topics.status()]
        .into_iter()
        .map(|name| TopicSpec {
            name,
            partitions: 1,
            replication,
            compacted: true,
        })
        .collect()
}

/// Kafka's murmur2 hash, exactly as the Java client's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner picks for a (serialized) key:
/// `toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// `cleanup.policy=compact`.
    pub compacted: bool,
}

/// The topic settings of Ferry's compacted topics (`_state`, `_status`, `_schemas`):
/// `cleanup.policy=compact`, and a segment rolled at least hourly, so that the log
/// cleaner (which never touches the active segment) keeps them small on a quiet
/// migration too, and a restarted coordinator or service reads little to rebuild.
pub const COMPACTED_TOPIC_CONFIG: [(&str, &str); 2] =
    [("cleanup.policy", "compact"), ("segment.ms", "3600000")];

/// Creates the topics that don't exist yet (existing ones are left as they are) and
/// waits until the broker's metadata shows every one. Returns each topic's partition
/// count as the broker has it.
pub async fn ensure_topics(
    config: &ClientConfig,
    topics: &[TopicSpec],
) -> Result<HashMap<String, i32>, Error> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| Error::new("creating a kafka admin client", e))?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(TIMEOUT))
        .request_timeout(Some(TIMEOUT));
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication),
            );
            if t.compacted {
                COMPACTED_TOPIC_CONFIG
                    .iter()
                    .fold(topic, |topic, (key, value)| topic.set(key, value))
            } else {
                topic
            }
        })
        .collect();
    if !new.is_empty() {
        let results = admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|e| Error::new("creating topics", e))?;
        for result in results {
            if let Err((name, code)) = result {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(Error::new(
                        format!("creating topic {name}"),
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
    }
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| Error::new("creating a kafka client", e))?;
        let deadline = Instant::now() + TIMEOUT;
        let mut out = HashMap::new();
        for name in names {
            loop {
                let md = consumer
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
                    .map_err(|e| Error::new(format!("reading metadata of topic {name}"), e))?;
                let count = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == name && t.error().is_none())
                    .map(|t| t.partitions().len() as i32)
                    .unwrap_or(0);
                if count > 0 {
                    out.insert(name.clone(), count);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::msg(format!(
                        "topic {name} did not appear in the broker's metadata within {TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::msg(format!("metadata task failed: {e}")))?
}

/// Deletes `names` (topics that don't exist are fine).
pub async fn delete_topics(config: &ClientConfig, names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| Error::new("creating a kafka admin client", e))?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(TIMEOUT))
        .request_timeout(Some(TIMEOUT));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let results = admin
        .delete_topics(&refs, &opts)
        .await
        .map_err(|e| Error::new("deleting topics", e))?;
    for result in results {
        if let Err((name, code)) = result {
            if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(Error::new(
                    format!("deleting topic {name}"),
                    KafkaError::AdminOp(code),
                ));
            }
        }
    }
    Ok(())
}

/// `config` with the settings of an idempotent, ordered producer: `enable.idempotence`,
/// `acks=all`, a short linger, a bounded local queue, and the Java client's partitioner
/// (`murmur2_random`) for records produced without an explicit partition.
pub fn idempotent_producer_config(config: &ClientConfig) -> ClientConfig {
    let mut c = config.clone();
    for (k, v) in [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "5"),
        // A bounded local queue: when the broker takes less than the exporter makes,
        // the stamper waits (QueueFull) instead of the queue growing to gigabytes.
        //
        // 20,000 records, not more: librdkafka walks a record three more times after
        // sending it (its offset from the broker's answer, the acknowledgement, the
        // delivery report), and in a snapshot, where the queue is always full, a
        // record that waited behind 100,000 others (about 30 MB) was out of the CPU's
        // caches again by then: 10 % more CPU per snapshot row (docs/benchmarks.md,
        // "Changes of 2026-12-07 (fourth session)"). A record counts until its
        // delivery report is served, so this also bounds the records in flight: about
        // 20,000 per acknowledged round trip, ample on a local network; a broker tens
        // of milliseconds away wants more (docs/architecture.md).
        ("queue.buffering.max.messages", "20000"),
        ("queue.buffering.max.kbytes", "65536"),
        ("batch.num.messages", "10000"),
        ("compression.type", "lz4"),
        ("message.timeout.ms", "300000"),
        ("partitioner", "murmur2_random"),
    ] {
        if c.get(k).is_none() {
            c.set(k, v);
        }
    }
    c
}

fn read_consumer(config: &ClientConfig) -> Result<BaseConsumer<QuietContext>, Error> {
    let mut c = config.clone();
    c.set("group.id", "ferry-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    c.create_with_context(QuietContext)
        .map_err(|e| Error::new("creating a kafka consumer", e))
}

fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<i32, Error> {
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| Error::new(format!("reading metadata of topic {topic}"), e))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0))
}

/// [`watermarks`] of each of `topics`, with one client; a topic that does not exist has
/// none.
pub async fn watermarks_of(
    config: &ClientConfig,
    topics: &[String],
) -> Result<HashMap<String, Vec<(i64, i64)>>, Error> {
    let config = config.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer = read_consumer(&config)?;
        watermarks_blocking(&consumer, |t| topics.iter().any(|name| name == t), TIMEOUT)
    })
    .await
    .map_err(|e| Error::msg(format!("watermark task failed: {e}")))?
}

/// [`watermarks_of`] every topic whose name starts with `prefix` (a stream's table
/// topics: `<prefix>.<stream>.`), each request bounded by `timeout`.
pub async fn watermarks_with_prefix(
    config: &ClientConfig,
    prefix: &str,
    timeout: Duration,
) -> Result<HashMap<String, Vec<(i64, i64)>>, Error> {
    let config = config.clone();
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = read_consumer(&config)?;
        watermarks_blocking(&consumer, |t| t.starts_with(&prefix), timeout)
    })
    .await
    .map_err(|e| Error::msg(format!("watermark task failed: {e}")))?
}

/// [`watermarks_of`] on `consumer`, in three requests whatever the number of partitions
/// (one metadata request, one ListOffsets for the starts, one for the ends), where one
/// request per partition took seconds with hundreds of partitions. Blocking.
pub fn watermarks_blocking<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    select: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Result<HashMap<String, Vec<(i64, i64)>>, Error> {
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| Error::new("reading the topics' metadata", e))?;
    let mut starts = TopicPartitionList::new();
    let mut ends = TopicPartitionList::new();
    let mut out: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for t in md.topics() {
        if t.error().is_some() || !select(t.name()) {
            continue;
        }
        let n = t.partitions().len();
        out.insert(t.name().to_owned(), vec![(0, 0); n]);
        for p in t.partitions() {
            let _ = starts.add_partition_offset(t.name(), p.id(), Offset::Beginning);
            let _ = ends.add_partition_offset(t.name(), p.id(), Offset::End);
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    for (list, is_end) in [(starts, false), (ends, true)] {
        let found = consumer
            .offsets_for_times(list, timeout)
            .map_err(|e| Error::new("reading the partitions' offsets", e))?;
        for e in found.elements() {
            let Offset::Offset(o) = e.offset() else {
                continue;
            };
            let slot = out.get_mut(e.topic()).and_then(|v| {
                usize::try_from(e.partition())
                    .ok()
                    .and_then(|i| v.get_mut(i))
            });
            if let Some((low, high)) = slot {
                if is_end {
                    *high = o;
                } else {
                    *low = o;
                }
            }
        }
    }
    Ok(out)
}

/// `(low, high)` watermarks of every partition of `topic`, by partition number; empty
/// when the topic does not exist.
pub async fn watermarks(config: &ClientConfig, topic: &str) -> Result<Vec<(i64, i64)>, Error> {
    let config = config.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = read_consumer(&config)?;
        let n = partition_count(&consumer, &topic)?;
        (0..n)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, TIMEOUT)
                    .map_err(|e| Error::new(format!("reading watermarks of {topic}[{p}]"), e))
            })
            .collect()
    })
    .await
    .map_err(|e| Error::msg(format!("watermark task failed: {e}")))?
}

/// Names of the existing topics that start with `prefix`, sorted.
pub async fn list_topics(config: &ClientConfig, prefix: &str) -> Result<Vec<String>, Error> {
    let config = config.clone();
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = read_consumer(&config)?;
        let md = consumer
            .fetch_metadata(None, TIMEOUT)
            .map_err(|e| Error::new("listing topics", e))?;
        let mut names: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        names.sort();
        Ok(names)
    })
    .await
    .map_err(|e| Error::msg(format!("metadata task failed: {e}")))?
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None`: tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers as `(name, value)`.
    pub headers: Vec<(String, Vec<u8>)>,
}

fn to_record<M: Message>(m: &M) -> Record {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Reads every partition of `topic` from `start` (per partition: `None` from the
/// beginning) up to the high watermarks taken when the call starts. Records come in
/// offset order per partition.
fn read_range(
    consumer: &BaseConsumer<QuietContext>,
    topic: &str,
    start: impl Fn(i32, i64, i64) -> Option<i64>,
) -> Result<Vec<Record>, Error> {
    let n = partition_count(consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..n {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .map_err(|e| Error::new(format!("reading watermarks of {topic}[{p}]"), e))?;
        let from = start(p, low, high).unwrap_or(low).max(low);
        if from < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(|e| Error::new("building an assignment", e))?;
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::new(format!("assigning {topic}"), e))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::msg(format!(
                "reading {topic} to its end took longer than 120 s"
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(e)) => return Err(Error::new(format!("reading {topic}"), e)),
            Some(Ok(m)) => {
                let p = m.partition();
                let offset = m.offset();
                if let Some(&end) = ends.get(&p) {
                    if offset < end {
                        out.push(to_record(&m));
                    }
                    if offset + 1 >= end {
                        ends.remove(&p);
                    }
                }
            }
        }
        // Partitions whose remaining records are all transaction markers never yield
        // a message: check the position too.
        if let Ok(pos) = consumer.position() {
            for e in pos.elements_for_topic(topic) {
                if let Offset::Offset(o) = e.offset() {
                    if ends.get(&e.partition()).is_some_and(|&end| o >= end) {
                        ends.remove(&e.partition());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Every record of `topic` up to its current end, in offset order per partition.
pub async fn read_all(config: &ClientConfig, topic: &str) -> Result<Vec<Record>, Error> {
    let config = config.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = read_consumer(&config)?;
        read_range(&consumer, &topic, |_, _, _| None)
    })
    .await
    .map_err(|e| Error::msg(format!("read task failed: {e}")))?
}

/// The latest value of every key of a compacted topic, read to its current end
/// (a tombstone removes the key).
pub async fn read_compacted(
    config: &ClientConfig,
    topic: &str,
) -> Result<HashMap<Vec<u8>, Vec<u8>>, Error> {
    let mut out = HashMap::new();
    for r in read_all(config, topic).await? {
        if let Some(key) = r.key {
            match r.value {
                Some(v) => {
                    out.insert(key, v);
                }
                None => {
                    out.remove(&key);
                }
            }
        }
    }
    Ok(out)
}

/// The last record of every non-empty partition of `topic` (a few records are read
/// from the end of each, so trailing transaction markers are skipped).
pub async fn last_records(config: &ClientConfig, topic: &str) -> Result<Vec<Record>, Error> {
    let config = config.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = read_consumer(&config)?;
        let records = read_range(&consumer, &topic, |_, _, high| Some(high - 8))?;
        let mut last: HashMap<i32, Record> = HashMap::new();
        for r in records {
            last.insert(r.partition, r);
        }
        let mut out: Vec<Record> = last.into_values().collect();
        out.sort_by_key(|r| r.partition);
        Ok(out)
    })
    .await
    .map_err(|e| Error::msg(format!("read task failed: {e}")))?
}

/// What consumer groups committed on a set of topics: one OffsetFetch per group (no
/// group is joined).
pub struct LagProbe {
    groups: Vec<(String, BaseConsumer)>,
    partitions: TopicPartitionList,
}

impl LagProbe {
    /// A probe of `groups` on every partition of `topics` (partition counts as the
    /// broker has them now). Blocking: call from a blocking thread.
    pub fn new(config: &ClientConfig, groups: &[String], topics: &[String]) -> Result<Self, Error> {
        let mut all = Vec::with_capacity(groups.len());
        for g in groups {
            let mut c = config.clone();
            c.set("group.id", g)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false");
            let consumer: BaseConsumer = c
                .create()
                .map_err(|e| Error::new(format!("creating a kafka client for group {g}"), e))?;
            all.push((g.clone(), consumer));
        }
        let mut partitions = TopicPartitionList::new();
        if let Some((_, c)) = all.first() {
            for t in topics {
                for p in 0..partition_count(c, t)? {
                    partitions.add_partition(t, p);
                }
            }
        }
        Ok(LagProbe {
            groups: all,
            partitions,
        })
    }

    /// Per group, the sum of the offsets it committed on these partitions (a partition
    /// without a commit counts 0), or `None` when it committed on none. Blocking.
    pub fn committed(&self) -> Result<Vec<(String, Option<u64>)>, Error> {
        let mut out = Vec::with_capacity(self.groups.len());
        for (group, consumer) in &self.groups {
            if self.partitions.count() == 0 {
                out.push((group.clone(), None));
                continue;
            }
            let committed = consumer
                .committed_offsets(self.partitions.clone(), TIMEOUT)
                .map_err(|e| {
                    Error::new(format!("reading offsets committed by group {group}"), e)
                })?;
            let mut sum = None;
            for e in committed.elements() {
                if let Offset::Offset(at) = e.offset() {
                    *sum.get_or_insert(0) += u64::try_from(at).unwrap_or(0);
                }
            }
            out.push((group.clone(), sum));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 5] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn partitions_are_positive_and_in_range() {
        for i in 0..1000u32 {
            let p = partition_for_key(&i.to_be_bytes(), 7);
            assert!((0..7).contains(&p));
        }
        assert_eq!(partition_for_key(b"x", 0), 0);
    }
}
