//! The merged reader: one thread reads every partition range and hands the records on
//! in VSN order (the module above has the invariants).
//!
//! Records come from librdkafka many at a time ([`BatchQueue`], the importer's way:
//! docs/architecture.md, "Records taken in batches"): each partition's fetch queue is
//! forwarded to the reader's own queue before the partitions are assigned, and the
//! consumer's queue is polled (with no wait) only for the client's errors. The reader
//! assigns its partitions once and never unassigns them, so the forward stays; pausing
//! a partition (its queue full) keeps the forward, drops what was fetched ahead for it
//! and fetches again from the record after the last one taken.
//!
//! A partition with nothing more to read is paused for good. One whose last records in
//! its range are a transaction's marker (or aborted records) yields nothing more and
//! ends by its position, looked at whenever a take finds nothing and every
//! [`POSITIONS_EVERY`] while the merge waits. After [`STUCK_AFTER`] of waiting with
//! nothing taken, a partition whose next records were deleted is an error, else the
//! wait is logged (`Merge::stuck`).

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_produce_batch::{BatchQueue, Consumed};
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{config_for_reading, kafka_err, queue_cap, record_vsn, PartitionRange};
use super::{ReadError, RetainedRecord, BATCH};
use crate::position::Vsn;

/// [`super::VSN_HEADER`] as librdkafka's header lookup takes it.
const VSN_HEADER_C: &CStr = c"ferry.vsn";

/// Records taken from librdkafka per call.
const TAKE: usize = 1_024;

/// How long one call waits for a record when none is there.
const WAIT: Duration = Duration::from_millis(200);

/// How often positions are looked at while the merge waits for a partition.
const POSITIONS_EVERY: Duration = Duration::from_millis(200);

/// How long the reader waits for records with none coming before it looks at the
/// partitions the merge waits for.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// How long it waits for each of those partitions' offsets then.
const STUCK_ASK: Duration = Duration::from_secs(5);

type Queue = BatchQueue<DefaultConsumerContext>;

/// Reads partition ranges on a background thread and returns their records merged into
/// VSN order, duplicates skipped (module doc).
#[derive(Debug)]
pub struct MergedReader {
    rx: mpsc::Receiver<Result<Vec<RetainedRecord>, ReadError>>,
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    pauses: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    total: u64,
}

impl MergedReader {
    /// Starts reading `ranges` (empty ones are ignored).
    pub fn start(kafka: &ClientConfig, ranges: Vec<PartitionRange>) -> Result<Self, ReadError> {
        let total = ranges.iter().map(PartitionRange::len).sum();
        let consumer: BaseConsumer = config_for_reading(kafka)
            .create()
            .map_err(|e| kafka_err("creating a kafka consumer", e))?;
        let queue = BatchQueue::new(Arc::new(consumer))
            .map_err(|e| kafka_err("making the reader's queue", e))?;
        let (tx, rx) = mpsc::channel(4);
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let pauses = Arc::new(AtomicU64::new(0));
        let thread = {
            let counts = Counts {
                stop: stop.clone(),
                read: read.clone(),
                pauses: pauses.clone(),
            };
            std::thread::Builder::new()
                .name("ferry-replay-reader".into())
                .spawn(move || {
                    let result = merge_loop(&queue, ranges, &tx, &counts);
                    if let Err(e) = result {
                        let _ = tx.blocking_send(Err(e));
                    }
                })
                .map_err(|e| ReadError::Stream(format!("starting the reader thread: {e}")))?
        };
        Ok(MergedReader {
            rx,
            stop,
            read,
            pauses,
            thread: Some(thread),
            total,
        })
    }

    /// The next records in VSN order; `None` when every range is read.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<RetainedRecord>, ReadError>> {
        self.rx.recv().await
    }

    /// Records read so far (taken or skipped), and the records in all ranges.
    pub fn progress(&self) -> (u64, u64) {
        (self.read.load(Ordering::Relaxed), self.total)
    }

    /// How many times a partition was paused because its queue was full: other
    /// partitions lagged behind it in VSN (skew between partitions).
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// Stops the reader thread and waits for it.
    pub async fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx.close();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for MergedReader {
    fn drop(&mut self) {
        // The thread sees the flag within one wait and exits; `close` also joins it.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the reader thread shares with its [`MergedReader`].
struct Counts {
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    pauses: Arc<AtomicU64>,
}

struct Part {
    range: PartitionRange,
    topic: Arc<str>,
    queue: VecDeque<RetainedRecord>,
    done: bool,
    paused: bool,
}

fn one(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// The partitions being merged.
struct Merge<'a> {
    parts: Vec<Part>,
    index: HashMap<(Arc<str>, i32), usize>,
    /// The partition of the record taken last: records come in runs of one partition,
    /// so it is tried before the map (whose lookup needs an owned key, an allocation).
    last: Option<usize>,
    cap: usize,
    consumer: &'a BaseConsumer,
    counts: &'a Counts,
}

impl Merge<'_> {
    fn part_of(&mut self, topic: &str, partition: i32) -> Option<usize> {
        let i = match self.last {
            Some(i)
                if self.parts[i].range.partition == partition && *self.parts[i].topic == *topic =>
            {
                i
            }
            _ => *self.index.get(&(Arc::from(topic), partition))?,
        };
        self.last = Some(i);
        Some(i)
    }

    /// Queues one record taken from librdkafka on its partition, unless it is outside
    /// the partition's range or taken before; pauses the partition once its queue is
    /// full, or once it is done.
    fn take(&mut self, c: &Consumed<'_>) -> Result<(), ReadError> {
        if let Some(code) = c.error {
            return Err(partition_error(c, code));
        }
        let Some(i) = self.part_of(c.topic, c.partition) else {
            return Ok(());
        };
        let p = &mut self.parts[i];
        let offset = c.offset;
        if p.done || offset < p.range.from {
            return Ok(());
        }
        if offset >= p.range.to {
            return self.finish(i);
        }
        self.counts.read.fetch_add(1, Ordering::Relaxed);
        let last = offset + 1 >= p.range.to;
        let vsn = record_vsn(c.header(VSN_HEADER_C), c.payload).ok_or_else(|| {
            ReadError::Stream(format!(
                "record {}[{}]@{offset} carries no VSN; it was not written by a Ferry exporter",
                p.range.topic, p.range.partition
            ))
        })?;
        if p.range.max_vsn.is_some_and(|max| vsn > max) {
            return self.finish(i);
        }
        // Not a duplicate, not taken before, not before the start.
        if vsn > p.range.taken_through && vsn >= p.range.min_vsn {
            p.range.taken_through = vsn;
            p.queue.push_back(RetainedRecord {
                topic: p.topic.clone(),
                partition: p.range.partition,
                offset,
                timestamp_ms: c.timestamp_ms(),
                vsn,
                key: c.key.map(<[u8]>::to_vec),
                value: c.payload.map(<[u8]>::to_vec),
            });
        }
        if last {
            return self.finish(i);
        }
        if !p.paused && p.queue.len() >= self.cap {
            self.pause(i)?;
            self.counts.pauses.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn pause(&mut self, i: usize) -> Result<(), ReadError> {
        let p = &mut self.parts[i];
        self.consumer
            .pause(&one(&p.range.topic, p.range.partition))
            .map_err(|e| kafka_err("pausing a partition", e))?;
        p.paused = true;
        Ok(())
    }

    /// Partition `i` has nothing more to read: done, and paused for good, so that
    /// librdkafka fetches no more of it. A done partition still being fetched, in a
    /// topic still written to, kept the reader taking records past its end, and the
    /// reader looked at positions only when it took nothing.
    fn finish(&mut self, i: usize) -> Result<(), ReadError> {
        self.parts[i].done = true;
        if self.parts[i].paused {
            return Ok(());
        }
        self.pause(i)
    }

    /// Takes what librdkafka holds (waiting up to `wait` for a first record when it
    /// holds none): how many records and errors were taken.
    fn take_batch(&mut self, queue: &Queue, wait: Duration) -> Result<usize, ReadError> {
        let mut failed = None;
        let n = queue.consume(wait, TAKE, |c| {
            if failed.is_none() {
                failed = self.take(&c).err();
            }
        });
        failed.map_or(Ok(n), Err)
    }

    /// Moves heads to `out` while every unfinished partition has one, smallest VSN
    /// first, sending `out` whenever it holds [`BATCH`]; `false` when the receiver is
    /// gone or everything was read and sent.
    fn release(
        &mut self,
        out: &mut Vec<RetainedRecord>,
        tx: &mpsc::Sender<Result<Vec<RetainedRecord>, ReadError>>,
    ) -> Result<bool, ReadError> {
        loop {
            // (partition index, head VSN) of the smallest head.
            let mut best: Option<(usize, Vsn)> = None;
            for (i, p) in self.parts.iter().enumerate() {
                match p.queue.front() {
                    Some(r) if best.is_none_or(|(_, v)| r.vsn < v) => best = Some((i, r.vsn)),
                    Some(_) => {}
                    None if !p.done => return Ok(true),
                    None => {}
                }
            }
            let Some((i, _)) = best else {
                // Everything read and released.
                if !out.is_empty() {
                    let _ = tx.blocking_send(Ok(std::mem::take(out)));
                }
                return Ok(false);
            };
            let p = &mut self.parts[i];
            if let Some(r) = p.queue.pop_front() {
                out.push(r);
            }
            if p.paused && !p.done && p.queue.len() < self.cap / 2 {
                self.consumer
                    .resume(&one(&p.range.topic, p.range.partition))
                    .map_err(|e| kafka_err("resuming a partition", e))?;
                p.paused = false;
            }
            if out.len() >= BATCH && tx.blocking_send(Ok(std::mem::take(out))).is_err() {
                return Ok(false);
            }
        }
    }

    /// The unfinished partitions whose queue is empty: what the merge waits for.
    fn waiting(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.done && p.queue.is_empty())
            .map(|(i, _)| i)
    }

    /// Partitions whose remaining records are transaction markers (or aborted records)
    /// yield no record: their position shows they are done (`true`: one was). Asked
    /// when nothing was taken, and every [`POSITIONS_EVERY`] while the merge waits
    /// (asking for positions is a round trip to librdkafka's main thread; per record it
    /// took more time than everything else the replay does).
    fn done_by_position(&mut self) -> Result<bool, ReadError> {
        if self.waiting().next().is_none() {
            return Ok(false);
        }
        let Ok(pos) = self.consumer.position() else {
            return Ok(false);
        };
        let mut finished = false;
        for e in pos.elements() {
            if let Offset::Offset(o) = e.offset() {
                if let Some(&i) = self.index.get(&(Arc::from(e.topic()), e.partition())) {
                    if !self.parts[i].done && o >= self.parts[i].range.to {
                        self.finish(i)?;
                        finished = true;
                    }
                }
            }
        }
        Ok(finished)
    }

    /// After [`STUCK_AFTER`] of waiting with nothing taken: a partition the merge waits
    /// for whose next records were deleted is an error (librdkafka's report of it can
    /// be lost when the partition is paused at that moment, and the partition then
    /// never fetches again); otherwise the wait is logged. Nothing is concluded when
    /// the positions cannot be read. Each partition's offsets are asked for with a
    /// short timeout, and the stop flag is looked at between partitions, so a broker
    /// that does not answer holds the reader at most [`STUCK_ASK`] per partition.
    fn stuck(&mut self, stop: &AtomicBool) -> Result<(), ReadError> {
        let waiting: Vec<usize> = self.waiting().collect();
        let Ok(positions) = self.consumer.position() else {
            tracing::warn!(
                "replay: nothing came from {} partition(s) for {} s, and the reader's positions cannot be read",
                waiting.len(),
                STUCK_AFTER.as_secs()
            );
            return Ok(());
        };
        for i in waiting {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let p = &self.parts[i];
            let (topic, partition) = (&p.range.topic, p.range.partition);
            // The offset after the last record taken; none taken yet: the range's start.
            let next = match positions
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => p.range.from,
            };
            match self.consumer.fetch_watermarks(topic, partition, STUCK_ASK) {
                Ok((low, _)) if low > next => {
                    return Err(ReadError::Stream(deleted(topic, partition)))
                }
                Ok((low, high)) => tracing::warn!(
                    "replay: nothing came from {topic}[{partition}] for {} s; waiting for offset {next} (the partition holds {low}..{high}, the replay reads to {})",
                    STUCK_AFTER.as_secs(),
                    p.range.to
                ),
                Err(e) => tracing::warn!(
                    "replay: nothing came from {topic}[{partition}] for {} s, and its offsets cannot be read: {e}",
                    STUCK_AFTER.as_secs()
                ),
            }
        }
        Ok(())
    }
}

/// What a partition's deleted records mean for the operator.
fn deleted(topic: &str, partition: i32) -> String {
    format!(
        "records to replay were deleted from {topic}[{partition}] while it was read (retention or ferry archive changes); replay from a later start"
    )
}

/// The error a partition's error record means.
fn partition_error(c: &Consumed<'_>, code: RDKafkaErrorCode) -> ReadError {
    match code {
        // `auto.offset.reset=error`: the offset to read is no longer in the partition.
        RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange => {
            ReadError::Stream(deleted(c.topic, c.partition))
        }
        code => kafka_err(
            format!("reading {}[{}]", c.topic, c.partition),
            KafkaError::MessageConsumption(code),
        ),
    }
}

fn merge_loop(
    queue: &Queue,
    ranges: Vec<PartitionRange>,
    tx: &mpsc::Sender<Result<Vec<RetainedRecord>, ReadError>>,
    counts: &Counts,
) -> Result<(), ReadError> {
    let consumer: &BaseConsumer = queue.consumer();
    let parts: Vec<Part> = ranges
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|range| Part {
            topic: Arc::from(range.topic.as_str()),
            range,
            queue: VecDeque::new(),
            done: false,
            paused: false,
        })
        .collect();
    let index = parts
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.topic.clone(), p.range.partition), i))
        .collect();
    let mut merge = Merge {
        cap: queue_cap(parts.len()),
        parts,
        index,
        last: None,
        consumer,
        counts,
    };
    if !merge.parts.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for p in &merge.parts {
            // Before the assignment, which keeps it (module doc).
            queue
                .forward(&p.range.topic, p.range.partition)
                .map_err(|e| kafka_err("forwarding a replayed partition", e))?;
            tpl.add_partition_offset(
                &p.range.topic,
                p.range.partition,
                Offset::Offset(p.range.from),
            )
            .map_err(|e| kafka_err("building an assignment", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_err("assigning the replayed partitions", e))?;
    }
    let mut out: Vec<RetainedRecord> = Vec::with_capacity(BATCH);
    let mut last_positions = Instant::now();
    // Time spent waiting for records with none coming (not waiting to hand them on).
    let mut idle = Duration::ZERO;
    loop {
        if counts.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !merge.release(&mut out, tx)? {
            return Ok(());
        }
        // Released records go out in batches of BATCH, or as soon as nothing more was
        // fetched (a take would wait). Sending what was released after every record
        // handed the reader's consumer a batch of one or two records at a time: the
        // two threads spent more time waking each other than reading.
        let mut taken = merge.take_batch(queue, Duration::ZERO)?;
        if taken == 0 {
            if !out.is_empty() && tx.blocking_send(Ok(std::mem::take(&mut out))).is_err() {
                return Ok(());
            }
            let waiting = Instant::now();
            taken = merge.take_batch(queue, WAIT)?;
            if taken == 0 {
                idle += waiting.elapsed();
            }
        }
        if taken > 0 {
            idle = Duration::ZERO;
        }
        // The consumer's own queue: the client's errors. Never a record: every
        // partition is forwarded to the reader's queue.
        match consumer.poll(Duration::ZERO) {
            None => {}
            Some(Err(e)) => return Err(kafka_err("reading the replayed topics", e)),
            Some(Ok(m)) => {
                return Err(ReadError::Stream(format!(
                    "record {}[{}]@{} reached the reader outside its queue (a partition that was not forwarded): stopped rather than risk the VSN order; run the replay again",
                    m.topic(),
                    m.partition(),
                    m.offset()
                )))
            }
        }
        if taken == 0 || last_positions.elapsed() >= POSITIONS_EVERY {
            last_positions = Instant::now();
            if merge.done_by_position()? {
                // A partition ended: whatever the merge waits for now, it waits afresh.
                idle = Duration::ZERO;
            }
        }
        if idle >= STUCK_AFTER {
            idle = Duration::ZERO;
            merge.stuck(&counts.stop)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::VSN_HEADER;

    #[test]
    fn the_header_name_is_the_one_written() {
        assert_eq!(VSN_HEADER_C.to_str(), Ok(VSN_HEADER));
    }
}
