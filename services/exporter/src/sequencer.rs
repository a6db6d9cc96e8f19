//! The single stamping task, the producer and the checkpoint writer.
//!
//! Invariants kept here (DESIGN.md §4, §4a):
//!
//! - One task assigns VSNs, in the order items arrive, and hands the events of each
//!   batch it receives to one idempotent producer (`enable.idempotence`, `acks=all`)
//!   grouped by topic and partition, each partition's in VSN order, one call per group
//!   ([`ferry_produce_batch`], which never enqueues a record after a refused one of its
//!   partition), so VSNs strictly increase along the stream and inside every
//!   partition. A marker taken between two events of a batch may be queued before the
//!   events before it are produced: it is written only once they are acknowledged.
//! - VSNs of one run are contiguous; an [`AckWindow`] tracks the highest VSN below
//!   which Kafka acknowledged everything.
//! - A checkpoint is a marker taken by the stamper between two events (after a commit,
//!   a finished snapshot chunk, the end of the snapshot). It is written to `_state` only
//!   once every VSN before it is acknowledged; only after `_state` acknowledged it is its
//!   LSN published on [`Pipeline::durable`] for the slot's flush position.
//! - A checkpoint's `counts` are the events stamped below its `next_vsn`, per table and
//!   op: the stamper continues from the counts of the checkpoint it starts from, so a
//!   replay, which re-stamps the same changes with the same VSNs, counts them once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_produce_batch::{BatchProducer, Record};
use ferry_shared::checkpoint::{checkpoint_key, ExporterCheckpoint};
use ferry_shared::envelope::OpCounts;
use ferry_shared::kafka::idempotent_producer_config;
use ferry_shared::position::{Lsn, Vsn};
use ferry_shared::topics::Stream;
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::progress::Progress;
use ferry_shared::clock::now_ms;
use ferry_shared::codec::{stamp, Pending};
use std::sync::atomic::Ordering;

/// What the stamper receives, in stream order.
#[derive(Debug)]
pub enum Item {
    /// An event to stamp and produce.
    Event(Pending),
    /// Every event of this snapshot chunk was sent before this item.
    ChunkDone {
        /// `schema.table`.
        table: String,
        /// Chunk index.
        chunk: usize,
    },
    /// Every snapshot chunk is done.
    SnapshotDone,
    /// Every event of the transaction ending at `end_lsn` was sent before this item.
    Commit {
        /// The commit's end LSN.
        end_lsn: Lsn,
    },
}

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// The producer could not be created or refused a record.
    #[error("producing to kafka")]
    Produce(#[source] KafkaError),
    /// Kafka did not acknowledge an event.
    #[error("kafka did not acknowledge event {vsn} (topic {topic}): {message}")]
    Delivery {
        /// The event's VSN.
        vsn: u64,
        /// Topic.
        topic: String,
        /// The error.
        message: String,
    },
    /// The checkpoint could not be stored.
    #[error("storing the exporter checkpoint in {topic}")]
    Checkpoint {
        /// `_state` topic.
        topic: String,
        /// The error.
        #[source]
        source: KafkaError,
    },
    /// A task ended abnormally.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Acknowledged VSNs of this run.
#[derive(Debug)]
struct AckWindow {
    /// VSN of `window[0]`.
    base: u64,
    window: VecDeque<bool>,
    error: Option<(u64, String, String)>,
}

impl AckWindow {
    fn acked_through(&self) -> u64 {
        self.base.saturating_sub(1)
    }
}

struct AckContext {
    acks: Arc<Mutex<AckWindow>>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, vsn: usize) {
        let vsn = vsn as u64;
        let Ok(mut acks) = self.acks.lock() else {
            return;
        };
        match result {
            Ok(_) => {
                if vsn >= acks.base {
                    let i = (vsn - acks.base) as usize;
                    if let Some(slot) = acks.window.get_mut(i) {
                        *slot = true;
                    }
                    while acks.window.front() == Some(&true) {
                        acks.window.pop_front();
                        acks.base += 1;
                    }
                }
            }
            Err((e, m)) => {
                if acks.error.is_none() {
                    use rdkafka::Message;
                    acks.error = Some((vsn, m.topic().to_owned(), e.to_string()));
                }
            }
        }
    }
}

#[derive(Debug)]
struct Marker {
    /// Every VSN up to this one must be acknowledged.
    through: u64,
    checkpoint: ExporterCheckpoint,
}

/// A running stamper and checkpoint writer.
pub struct Pipeline {
    /// Where snapshot readers and the change stream send items.
    pub items: mpsc::Sender<Vec<Item>>,
    /// The LSN of the last stored checkpoint: the slot may be confirmed up to it.
    pub durable: watch::Receiver<Lsn>,
    /// The last stored checkpoint.
    pub written: watch::Receiver<Option<ExporterCheckpoint>>,
    stamper: JoinHandle<Result<u64, SequencerError>>,
    checkpointer: JoinHandle<Result<(), SequencerError>>,
    finish_tx: watch::Sender<Option<u64>>,
}

/// Settings of a pipeline.
pub struct PipelineConfig {
    /// librdkafka settings (bootstrap, security).
    pub kafka: ClientConfig,
    /// Topic names, by index.
    pub topics: Vec<String>,
    /// `schema.table` of each topic, by the same index (the keys of the counts).
    pub tables: Vec<String>,
    /// `_state` topic.
    pub state_topic: String,
    /// Stream (names the checkpoint key).
    pub stream: Stream,
    /// The checkpoint to continue from; its `next_vsn` is the first VSN stamped.
    pub start: ExporterCheckpoint,
    /// Counters for the progress table and heartbeats.
    pub progress: Arc<Progress>,
}

impl Pipeline {
    /// Starts the stamper and the checkpoint writer.
    pub fn start(cfg: PipelineConfig) -> Result<Pipeline, SequencerError> {
        let first = cfg.start.next_vsn.0.max(1);
        cfg.progress.last_vsn.store(first - 1, Ordering::Relaxed);
        let acks = Arc::new(Mutex::new(AckWindow {
            base: first,
            window: VecDeque::new(),
            error: None,
        }));
        let producer_config = idempotent_producer_config(&cfg.kafka);
        let producer: ThreadedProducer<AckContext> = producer_config
            .create_with_context(AckContext { acks: acks.clone() })
            .map_err(SequencerError::Produce)?;
        let producer = BatchProducer::new(producer, &producer_config, &cfg.topics)
            .map_err(SequencerError::Produce)?;
        let state_producer: FutureProducer = idempotent_producer_config(&cfg.kafka)
            .set("linger.ms", "0")
            .create()
            .map_err(SequencerError::Produce)?;
        let (items_tx, items_rx) = mpsc::channel::<Vec<Item>>(64);
        let markers = Arc::new(Mutex::new(VecDeque::<Marker>::new()));
        let (durable_tx, durable_rx) = watch::channel(cfg.start.lsn);
        let (written_tx, written_rx) = watch::channel(None);
        let (finish_tx, finish_rx) = watch::channel(None);

        let stamper = tokio::spawn(stamp_loop(
            items_rx,
            producer,
            acks.clone(),
            markers.clone(),
            cfg.topics,
            cfg.tables,
            cfg.start.clone(),
            first,
            cfg.progress.clone(),
        ));
        let checkpointer = tokio::spawn(checkpoint_loop(
            state_producer,
            cfg.state_topic,
            checkpoint_key(cfg.stream),
            acks,
            markers,
            durable_tx,
            written_tx,
            finish_rx,
            cfg.progress,
        ));
        Ok(Pipeline {
            items: items_tx,
            durable: durable_rx,
            written: written_rx,
            stamper,
            checkpointer,
            finish_tx,
        })
    }

    /// Stops intake, waits until Kafka acknowledged everything sent, stores the last
    /// checkpoint and returns it.
    pub async fn finish(self) -> Result<Option<ExporterCheckpoint>, SequencerError> {
        let Pipeline {
            items,
            written,
            stamper,
            checkpointer,
            finish_tx,
            ..
        } = self;
        drop(items);
        let stamped = stamper
            .await
            .map_err(|e| SequencerError::Internal(format!("stamper: {e}")));
        let last = match stamped {
            Ok(Ok(last)) => last,
            Ok(Err(e)) | Err(e) => {
                checkpointer.abort();
                return Err(e);
            }
        };
        finish_tx.send_replace(Some(last));
        let written_result = checkpointer
            .await
            .map_err(|e| SequencerError::Internal(format!("checkpointer: {e}")))?;
        written_result?;
        let last = written.borrow().clone();
        Ok(last)
    }
}

#[allow(clippy::too_many_arguments)]
async fn stamp_loop(
    mut rx: mpsc::Receiver<Vec<Item>>,
    mut producer: BatchProducer<AckContext>,
    acks: Arc<Mutex<AckWindow>>,
    markers: Arc<Mutex<VecDeque<Marker>>>,
    topics: Vec<String>,
    tables: Vec<String>,
    mut checkpoint: ExporterCheckpoint,
    first: u64,
    progress: Arc<Progress>,
) -> Result<u64, SequencerError> {
    let mut next = first;
    let mut stamped = Stamped::default();
    // Counted by index while stamping, written into the checkpoint at each marker.
    let mut counts: Vec<OpCounts> = tables
        .iter()
        .map(|t| checkpoint.counts.get(t).copied().unwrap_or_default())
        .collect();
    let push_marker = |through: u64, checkpoint: &mut ExporterCheckpoint, counts: &[OpCounts]| {
        for (table, c) in tables.iter().zip(counts) {
            if c.total() > 0 {
                checkpoint.counts.insert(table.clone(), *c);
            }
        }
        if let Ok(mut m) = markers.lock() {
            m.push_back(Marker {
                through,
                checkpoint: checkpoint.clone(),
            });
        }
    };
    while let Some(batch) = rx.recv().await {
        // Every event of the batch gets its place in the window before the first is
        // sent (one lock per batch, not per event).
        let events = batch.iter().filter(|i| matches!(i, Item::Event(_))).count();
        if let Ok(mut a) = acks.lock() {
            let len = a.window.len();
            a.window.resize(len + events, false);
        }
        // One marker per batch, at its last commit or chunk end: the checkpoint writer
        // stores only the newest acknowledged marker anyway, and the state of the
        // checkpoint (chunks done, the snapshot's end, the LSN) is cumulative. A batch of
        // many one-row transactions so costs one checkpoint copy, not one per commit.
        let last_marker = batch
            .iter()
            .rposition(|i| !matches!(i, Item::Event(_)))
            .unwrap_or(usize::MAX);
        for (at, item) in batch.into_iter().enumerate() {
            let marker = at == last_marker;
            match item {
                Item::Event(p) => {
                    // No record headers: the VSN is the envelope's first field
                    // (registry::framed_vsn), and a header per record costs librdkafka
                    // about a microsecond of CPU per event.
                    stamped.push(&p, Vsn(next));
                    if stamped.bytes.len() >= STAMPED_BYTES {
                        stamped.produce(&mut producer, &topics, &acks).await?;
                    }
                    if let Some(c) = counts.get_mut(p.topic_index) {
                        c.add(p.op);
                    }
                    progress.events.fetch_add(1, Ordering::Relaxed);
                    progress.last_vsn.store(next, Ordering::Relaxed);
                    next += 1;
                }
                Item::ChunkDone { table, chunk } => {
                    if let Some(t) = checkpoint.snapshot.tables.get_mut(&table) {
                        if let Some(d) = t.done.get_mut(chunk) {
                            *d = true;
                        }
                    }
                    checkpoint.next_vsn = Vsn(next);
                    if marker {
                        push_marker(next - 1, &mut checkpoint, &counts);
                    }
                }
                Item::SnapshotDone => {
                    checkpoint.snapshot.done = true;
                    checkpoint.snapshot.tables.clear();
                    checkpoint.next_vsn = Vsn(next);
                    if marker {
                        push_marker(next - 1, &mut checkpoint, &counts);
                    }
                }
                Item::Commit { end_lsn } => {
                    checkpoint.lsn = end_lsn;
                    checkpoint.next_vsn = Vsn(next);
                    if marker {
                        push_marker(next - 1, &mut checkpoint, &counts);
                    }
                }
            }
        }
        stamped.produce(&mut producer, &topics, &acks).await?;
        if let Some(e) = delivery_error(&acks) {
            return Err(e);
        }
    }
    // Intake closed: wait for the producer's queue to drain.
    let producer = Arc::new(producer);
    let p = producer.clone();
    let flushed = tokio::task::spawn_blocking(move || p.producer().flush(Duration::from_secs(300)))
        .await
        .map_err(|e| SequencerError::Internal(format!("flush: {e}")))?;
    flushed.map_err(SequencerError::Produce)?;
    if let Some(e) = delivery_error(&acks) {
        return Err(e);
    }
    Ok(next - 1)
}

/// How many bytes of stamped keys and values the stamper gathers before it produces
/// them (a batch of large rows is produced in several calls).
const STAMPED_BYTES: usize = 1 << 20;

/// The stamped events of a batch, produced together: their keys and values one after
/// the other in one buffer.
#[derive(Default)]
struct Stamped {
    bytes: Vec<u8>,
    records: Vec<StampedRecord>,
}

/// Where a stamped event's key ends and its value ends in [`Stamped::bytes`] (its key
/// starts where the previous value ended).
struct StampedRecord {
    topic: usize,
    partition: i32,
    vsn: u64,
    key_end: usize,
    value_end: usize,
}

impl Stamped {
    fn push(&mut self, p: &Pending, vsn: Vsn) {
        self.bytes.extend_from_slice(&p.key);
        let key_end = self.bytes.len();
        stamp(p, vsn, &mut self.bytes);
        self.records.push(StampedRecord {
            topic: p.topic_index,
            partition: p.partition,
            vsn: vsn.0,
            key_end,
            value_end: self.bytes.len(),
        });
    }

    /// Produces every gathered event: one call per run of one topic and partition
    /// (records of a topic grouped by partition, each partition's in VSN order, so
    /// librdkafka finds each partition once per call); waits while librdkafka's local
    /// queue is full.
    async fn produce(
        &mut self,
        producer: &mut BatchProducer<AckContext>,
        topics: &[String],
        acks: &Mutex<AckWindow>,
    ) -> Result<(), SequencerError> {
        let mut from = 0;
        let mut records: Vec<Record<'_>> = Vec::with_capacity(self.records.len());
        let mut starts: Vec<usize> = Vec::new();
        while from < self.records.len() {
            let topic = self.records[from].topic;
            let to = self.records[from..]
                .iter()
                .position(|r| r.topic != topic)
                .map_or(self.records.len(), |n| from + n);
            group_by_partition(
                &self.records,
                &self.bytes,
                from..to,
                &mut records,
                &mut starts,
            );
            for group in starts.windows(2) {
                let group = &records[group[0]..group[1]];
                let mut sent = 0;
                while sent < group.len() {
                    match producer.send_batch(topic, &group[sent..]) {
                        Ok(n) => sent += n,
                        Err((i, e)) => {
                            let name = topics.get(topic).map(String::as_str).unwrap_or("?");
                            let vsn = group[sent + i].opaque;
                            tracing::error!(topic = name, vsn, "kafka refused an event: {e}");
                            return Err(SequencerError::Produce(e));
                        }
                    }
                    if sent < group.len() {
                        // A full local queue means wait, not fail; unless Kafka refused
                        // an event already, which ends the run anyway.
                        if let Some(e) = delivery_error(acks) {
                            return Err(e);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            from = to;
        }
        self.records.clear();
        self.bytes.clear();
        // One very large row does not keep its buffer for the rest of the run.
        if self.bytes.capacity() > 4 * STAMPED_BYTES {
            self.bytes.shrink_to(STAMPED_BYTES);
        }
        Ok(())
    }
}

/// The first event Kafka did not acknowledge, if any.
fn delivery_error(acks: &Mutex<AckWindow>) -> Option<SequencerError> {
    let a = acks.lock().ok()?;
    let (vsn, topic, message) = a.error.as_ref()?;
    Some(SequencerError::Delivery {
        vsn: *vsn,
        topic: topic.clone(),
        message: message.clone(),
    })
}

/// The records of `stamped[range]` (all of one topic) into `out`, grouped by partition
/// in the order of partition numbers, each group in stamping order (a counting sort);
/// `starts` gets each group's start in `out`, and `out.len()` last.
fn group_by_partition<'a>(
    stamped: &[StampedRecord],
    bytes: &'a [u8],
    range: std::ops::Range<usize>,
    out: &mut Vec<Record<'a>>,
    starts: &mut Vec<usize>,
) {
    let run = &stamped[range.clone()];
    // Where each record's key starts: where the previous record's value ended.
    let start_of = |i: usize| if i == 0 { 0 } else { stamped[i - 1].value_end };
    let record = |i: usize| {
        let r = &stamped[i];
        Record {
            partition: r.partition,
            key: &bytes[start_of(i)..r.key_end],
            payload: &bytes[r.key_end..r.value_end],
            opaque: r.vsn as usize,
        }
    };
    out.clear();
    starts.clear();
    let parts = run.iter().map(|r| r.partition).max().unwrap_or(0);
    let ordinary = run.iter().all(|r| r.partition >= 0);
    if !ordinary || parts == 0 {
        // One partition (or a negative one, which `send_batch` refuses; the stamper's
        // partitions never are): as stamped.
        out.extend(range.map(record));
        starts.extend([0, out.len()]);
        return;
    }
    let parts = parts as usize + 1;
    // counts[p + 1] = records of partition p, then prefix sums: where each group starts.
    let mut next = vec![0usize; parts + 1];
    for r in run {
        next[r.partition as usize + 1] += 1;
    }
    for p in 1..=parts {
        next[p] += next[p - 1];
    }
    // The group starts, without the empty partitions' (equal neighbours).
    starts.extend_from_slice(&next);
    starts.dedup();
    let first = record(range.start);
    out.resize(run.len(), first);
    for i in range {
        let p = stamped[i].partition as usize;
        out[next[p]] = record(i);
        next[p] += 1;
    }
}

#[allow(clippy::too_many_arguments)]
async fn checkpoint_loop(
    producer: FutureProducer,
    topic: String,
    key: String,
    acks: Arc<Mutex<AckWindow>>,
    markers: Arc<Mutex<VecDeque<Marker>>>,
    durable: watch::Sender<Lsn>,
    written: watch::Sender<Option<ExporterCheckpoint>>,
    mut finish: watch::Receiver<Option<u64>>,
    progress: Arc<Progress>,
) -> Result<(), SequencerError> {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let finishing = *finish.borrow();
        let (acked, error) = match acks.lock() {
            Ok(a) => (a.acked_through(), a.error.clone()),
            Err(_) => return Err(SequencerError::Internal("ack window poisoned".into())),
        };
        if let Some((vsn, t, message)) = error {
            return Err(SequencerError::Delivery {
                vsn,
                topic: t,
                message,
            });
        }
        let ready = {
            let Ok(mut m) = markers.lock() else {
                return Err(SequencerError::Internal("marker queue poisoned".into()));
            };
            let mut ready = None;
            while m.front().is_some_and(|f| f.through <= acked) {
                ready = m.pop_front();
            }
            ready
        };
        if let Some(marker) = ready {
            let mut cp = marker.checkpoint;
            cp.written_at_ms = now_ms();
            let payload = cp.to_json();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(source, _)| SequencerError::Checkpoint {
                    topic: topic.clone(),
                    source,
                })?;
            tracing::debug!(lsn = %cp.lsn, next_vsn = %cp.next_vsn, "checkpoint stored");
            progress.lsn.store(cp.lsn.0, Ordering::Relaxed);
            progress.succeeded();
            durable.send_replace(cp.lsn);
            written.send_replace(Some(cp));
        }
        if let Some(last) = finishing {
            let empty = markers.lock().map(|m| m.is_empty()).unwrap_or(true);
            if acked >= last && empty {
                return Ok(());
            }
            if acked < last {
                // The stamper flushed: whatever is not acknowledged now failed.
                let stuck = acks.lock().map(|a| a.error.is_none()).unwrap_or(false);
                if stuck {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = finish.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stamped records of topic 0 in `partitions`, record `i` with key `k<i>`, value
    /// `value <i>` and VSN `100 + i`, one after the other in one buffer.
    fn stamped(partitions: &[i32]) -> (Vec<StampedRecord>, Vec<u8>) {
        let mut bytes = Vec::new();
        let mut records = Vec::new();
        for (i, &partition) in partitions.iter().enumerate() {
            bytes.extend_from_slice(format!("k{i}").as_bytes());
            let key_end = bytes.len();
            bytes.extend_from_slice(format!("value {i}").as_bytes());
            records.push(StampedRecord {
                topic: 0,
                partition,
                vsn: 100 + i as u64,
                key_end,
                value_end: bytes.len(),
            });
        }
        (records, bytes)
    }

    /// `(partition, opaque, key, value)` of each grouped record.
    fn seen(out: &[Record<'_>]) -> Vec<(i32, usize, String, String)> {
        out.iter()
            .map(|r| {
                (
                    r.partition,
                    r.opaque,
                    String::from_utf8_lossy(r.key).into_owned(),
                    String::from_utf8_lossy(r.payload).into_owned(),
                )
            })
            .collect()
    }

    /// What `group_by_partition` must give for records `range` of `partitions`.
    fn expected(
        partitions: &[i32],
        range: std::ops::Range<usize>,
    ) -> Vec<(i32, usize, String, String)> {
        let mut by_partition: Vec<usize> = range.collect();
        by_partition.sort_by_key(|&i| partitions[i]); // stable: stamping order kept
        by_partition
            .into_iter()
            .map(|i| {
                (
                    partitions[i],
                    100 + i,
                    format!("k{i}"),
                    format!("value {i}"),
                )
            })
            .collect()
    }

    #[test]
    fn a_topics_records_go_out_grouped_by_partition_each_group_in_stamping_order() {
        let partitions = [2, 0, 2, 1, 0, 2, 2, 0, 1];
        let (records, bytes) = stamped(&partitions);
        let (mut out, mut starts) = (Vec::new(), Vec::new());
        group_by_partition(&records, &bytes, 0..9, &mut out, &mut starts);
        assert_eq!(seen(&out), expected(&partitions, 0..9));
        assert_eq!(starts, [0, 3, 5, 9]);
    }

    #[test]
    fn a_run_after_another_topics_records_keeps_its_keys_and_skips_empty_partitions() {
        // Records 1..5 (partitions 2, 1, 2, 1; none in 0): keys start where the record
        // before the run ended.
        let partitions = [0, 2, 1, 2, 1, 0];
        let (records, bytes) = stamped(&partitions);
        let (mut out, mut starts) = (Vec::new(), Vec::new());
        group_by_partition(&records, &bytes, 1..5, &mut out, &mut starts);
        assert_eq!(seen(&out), expected(&partitions, 1..5));
        assert_eq!(starts, [0, 2, 4]);
    }

    #[test]
    fn one_partition_goes_out_as_stamped_in_one_group() {
        let partitions = [0, 0, 0];
        let (records, bytes) = stamped(&partitions);
        let (mut out, mut starts) = (Vec::new(), Vec::new());
        group_by_partition(&records, &bytes, 0..3, &mut out, &mut starts);
        assert_eq!(seen(&out), expected(&partitions, 0..3));
        assert_eq!(starts, [0, 3]);
    }
}
