//! The Kafka side: one thread owns the consumer, polls it and hands records to the
//! applier over a bounded channel (backpressure: a full channel stops polling).
//!
//! Rebalances run in that thread, inside `poll`. On an assignment the thread reads the
//! partitions' positions from the destination ([`Sink::load_positions`]) and assigns the
//! partitions *at those offsets*, so no record before the stored position is fetched
//! and Kafka's committed offsets are never used to position the consumer. It then
//! sends [`Item::Assigned`] through the same channel as the records, so the applier
//! learns the positions before it sees any record fetched from them.
//!
//! Records are taken up to [`MAX_RECORDS_PER_ITEM`] at a time from a [`BatchQueue`]
//! that every assigned partition is forwarded to (before its assignment, and again
//! every [`FORWARD_AGAIN_EVERY`]); `poll` serves the group's events (docs/architecture.md,
//! "Records taken in batches").
//!
//! Kafka offsets are committed (asynchronously, for monitoring, tools and the exporter's
//! snapshot lead) only as far as destination transactions that stored them committed:
//! the newest per partition at most every [`commits::COMMIT_EVERY`], before partitions are
//! revoked, and when the consumer leaves; only for partitions held at the time, and a
//! refused commit is sent again unless the broker stored a newer offset meanwhile.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_produce_batch::BatchQueue;
use ferry_shared::fetch_stall::FetchStall;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::error::Failure;
use crate::sink::{Sink, Stored};

mod commits;
use commits::{commit_held, PendingCommits};
mod settings;
use settings::settings;

/// One record as the applier needs it.
#[derive(Debug)]
pub(crate) struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// What the consumer thread tells the applier, in order.
#[derive(Debug)]
pub(crate) enum Item {
    /// Records of assigned partitions, in the order polled (at most
    /// [`MAX_RECORDS_PER_ITEM`]).
    Records {
        records: Vec<Record>,
        /// librdkafka held nothing more when these were handed over: the importer has
        /// caught up with what the broker sent, and a batch waiting for more would only
        /// wait (the workers write what they hold once they have taken these).
        caught_up: bool,
    },
    /// Partitions assigned at these stored positions.
    Assigned(Vec<Stored>),
    /// All partitions revoked.
    Revoked,
    /// The consumer can't go on; the session restarts.
    Failed(Failure),
    /// High watermarks of the assigned partitions: (topic, partition, high).
    Watermarks(Vec<(String, i32, i64)>),
}

/// Requests from the applier to the consumer thread.
#[derive(Debug)]
pub(crate) enum Command {
    /// Commit these next offsets to Kafka.
    Commit(Vec<(String, i32, i64)>),
}

struct Ctx<S: Sink + Sync> {
    runtime: tokio::runtime::Handle,
    /// Where the positions are read on assignment.
    positions: Arc<S>,
    items: mpsc::Sender<Item>,
    /// The applier's requests, and the offsets to commit to Kafka: read by the polling
    /// thread, by the rebalance callback (which commits before partitions go) and by the
    /// commit callback (which puts back what the broker refused).
    commands: std::sync::Mutex<(std_mpsc::Receiver<Command>, PendingCommits)>,
    /// Where the assigned partitions' records go (each partition's fetch queue is
    /// forwarded to it before the partition is assigned), taken by the polling thread
    /// many at a time; none if it could not be made, and then records come through
    /// `poll`. Weak: the polling thread holds the queue, which holds the consumer, so
    /// that the queue always goes before the client; once it went, this no longer
    /// upgrades.
    batches: std::sync::Mutex<std::sync::Weak<BatchQueue<Self>>>,
}

impl<S: Sink + Sync> Ctx<S> {
    /// Takes the applier's requests; commits the offsets when [`commits::COMMIT_EVERY`] passed
    /// since the last commit, or at once when `now` (partitions going, the consumer
    /// leaving).
    fn send_offsets(&self, consumer: &BaseConsumer<Self>, now: bool)
    where
        Self: ConsumerContext,
    {
        let Ok(mut guard) = self.commands.lock() else {
            return;
        };
        let (commands, pending) = &mut *guard;
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Commit(newest) => pending.add(newest),
            }
        }
        let due = if now {
            pending.take()
        } else {
            pending.due(Instant::now())
        };
        if let Some(newest) = due {
            commit_held(consumer, newest);
        }
    }
}

impl<S: Sink + Sync> ClientContext for Ctx<S> {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        ferry_shared::kafka::log_client_error(&error, reason);
    }
}

impl<S: Sink + Sync> ConsumerContext for Ctx<S> {
    /// The broker's answer to a commit: what it refused (a rebalance in progress, the
    /// coordinator moving) goes back to the pending offsets for the next commit, what
    /// it stored keeps older offsets from being sent after it.
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        let (mut stored, mut refused) = (Vec::new(), Vec::new());
        for e in offsets.elements() {
            if let Offset::Offset(at) = e.offset() {
                let entry = (e.topic().to_owned(), e.partition(), at);
                if result.is_err() || e.error().is_err() {
                    refused.push(entry);
                } else {
                    stored.push(entry);
                }
            }
        }
        if !refused.is_empty() {
            tracing::debug!(
                partitions = refused.len(),
                "kafka refused an offset commit (monitoring only); sent again with the next one"
            );
        }
        if let Ok(mut guard) = self.commands.lock() {
            guard.1.stored(stored);
            guard.1.add(refused);
        }
    }

    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let loaded = self.runtime.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(60),
                        self.positions.load_positions(&parts),
                    )
                    .await
                });
                let positions = match loaded {
                    Ok(Ok(p)) => p,
                    Ok(Err(f)) => {
                        let _ = self.items.blocking_send(Item::Failed(f));
                        return;
                    }
                    Err(_) => {
                        let _ = self.items.blocking_send(Item::Failed(Failure::Transient(
                            "reading positions from ferry_metadata took over 60 s".into(),
                        )));
                        return;
                    }
                };
                let mut at = TopicPartitionList::new();
                for p in &positions {
                    if let Err(e) = at.add_partition_offset(
                        &p.topic,
                        p.partition,
                        Offset::Offset(p.next_offset),
                    ) {
                        let _ = self.items.blocking_send(Item::Failed(kafka_failure(
                            "building the assignment",
                            &e,
                        )));
                        return;
                    }
                }
                // Before the assignment: librdkafka keeps a forward that is there when
                // a partition's fetch starts, and clears it when the fetch stops.
                // One that cannot be forwarded fails the session: once forwarded, a
                // partition assigned without it gets its records nowhere.
                let batches = match self.batches.lock() {
                    Ok(b) => b.upgrade(),
                    Err(_) => {
                        let _ = self.items.blocking_send(Item::Failed(Failure::Transient(
                            "the batch queue's lock was poisoned".into(),
                        )));
                        return;
                    }
                };
                if let Some(batches) = batches {
                    for p in &positions {
                        if let Err(failed) = forward(&batches, &p.topic, p.partition) {
                            let _ = self.items.blocking_send(Item::Failed(failed));
                            return;
                        }
                    }
                }
                if let Err(e) = consumer.assign(&at) {
                    let _ = self
                        .items
                        .blocking_send(Item::Failed(kafka_failure("assigning partitions", &e)));
                    return;
                }
                tracing::info!(
                    partitions = positions.len(),
                    "partitions assigned at the positions stored in the destination"
                );
                let _ = self.items.blocking_send(Item::Assigned(positions));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Kafka's offsets as far as the destination's before another member
                // takes the partitions: committed later, they could overwrite what the
                // new owner committed since, and stay behind while it applies nothing.
                self.send_offsets(consumer, true);
                let _ = consumer.unassign();
                // try_send: this also runs when the consumer closes, possibly on a runtime
                // thread; a full channel means the applier restarts anyway.
                let _ = self.items.try_send(Item::Revoked);
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                let _ = self.items.try_send(Item::Revoked);
            }
        }
    }
}

pub(crate) fn kafka_failure(what: &str, e: &KafkaError) -> Failure {
    // Most Kafka errors surfacing here are transport or group-coordination problems
    // (librdkafka retries most itself, and a fresh session fixes the rest); what the
    // broker refuses for good stops the importer.
    Failure::of(
        ferry_shared::error_policy::classify_kafka(e),
        format!("kafka: {what}: {e}"),
    )
}

/// `^<prefix>\.<stream>\..*`, the regex subscription to every table topic of a stream.
pub(crate) fn topic_pattern(prefix: &str, stream: &str) -> String {
    let mut out = String::from("^");
    for c in format!("{prefix}.{stream}.").chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c);
        } else {
            out.push('\\');
            out.push(c);
        }
    }
    out.push_str(".*");
    out
}

/// Records handed over in one [`Item::Records`] at most.
pub(crate) const MAX_RECORDS_PER_ITEM: usize = 1024;

/// The running consumer thread.
pub(crate) struct ConsumerThread {
    pub items: mpsc::Receiver<Item>,
    pub commands: std_mpsc::Sender<Command>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConsumerThread {
    /// Subscribes to `pattern` in `group` and starts polling; positions are read from
    /// `positions` (a sink of the same group).
    pub(crate) fn start<S: Sink + Sync>(
        config: ClientConfig,
        group: &str,
        pattern: &str,
        positions: Arc<S>,
        capacity: usize,
        fetch_wait: Duration,
    ) -> Result<ConsumerThread, Failure> {
        let config = settings(config, group, fetch_wait);
        let (tx, rx) = mpsc::channel(capacity.max(16));
        let (cmd_tx, cmd_rx) = std_mpsc::channel::<Command>();
        let ctx = Ctx {
            runtime: tokio::runtime::Handle::current(),
            positions,
            items: tx.clone(),
            commands: std::sync::Mutex::new((cmd_rx, PendingCommits::new(Instant::now()))),
            batches: std::sync::Mutex::new(std::sync::Weak::new()),
        };
        let consumer: BaseConsumer<Ctx<S>> = config
            .create_with_context(ctx)
            .map_err(|e| kafka_failure("creating the consumer", &e))?;
        consumer
            .subscribe(&[pattern])
            .map_err(|e| kafka_failure("subscribing", &e))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-importer-consumer".into())
            .spawn(move || poll_loop(Arc::new(consumer), tx, stop2))
            .map_err(|e| Failure::Transient(format!("cannot start the consumer thread: {e}")))?;
        Ok(ConsumerThread {
            items: rx,
            commands: cmd_tx,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops polling, closes the consumer (leaving the group) and joins the thread.
    pub(crate) async fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Unblock a blocking_send by closing the receiving side.
        self.items.close();
        while self.items.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for ConsumerThread {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.items.close();
    }
}

/// Polls the consumer and hands records over in batches: a batch goes to the applier
/// when it is full or when librdkafka has nothing more fetched.
fn poll_loop<S: Sink + Sync>(
    consumer: Arc<BaseConsumer<Ctx<S>>>,
    items: mpsc::Sender<Item>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let stopped = || stop.load(std::sync::atomic::Ordering::SeqCst);
    let mut last_watermarks = std::time::Instant::now();
    let mut batch: Vec<Record> = Vec::with_capacity(MAX_RECORDS_PER_ITEM);
    let mut last_topic: Option<Arc<str>> = None;
    let mut told_waiting = false;
    // Time spent waiting for the applier to take a batch: the stall clock does not run
    // then (the consumer was kept from polling, not stuck).
    let mut blocked = Duration::ZERO;
    let mut stalls: HashMap<(String, i32), FetchStall> = HashMap::new();
    let mut errors = ferry_shared::repeats::Repeats::new(ferry_shared::repeats::EVERY);
    // Made before the first poll, so before any assignment.
    let batches = match BatchQueue::new(consumer.clone()) {
        Ok(queue) => {
            let queue = Arc::new(queue);
            if let Ok(mut b) = consumer.context().batches.lock() {
                *b = Arc::downgrade(&queue);
            }
            Some(queue)
        }
        Err(e) => {
            tracing::warn!(error = %e, "taking records one by one: no batch queue");
            None
        }
    };
    let mut last_forward = Instant::now();
    while !stopped() {
        // Housekeeping (the partition ends every 5 s, the offsets to commit) between
        // batches and every HOUSEKEEPING_EVERY records, not per record: reading the
        // clock per record was a few percent of this thread.
        let housekeeping = batch.len() % HOUSEKEEPING_EVERY == 0;
        if housekeeping && last_watermarks.elapsed() >= Duration::from_secs(5) {
            last_watermarks = std::time::Instant::now();
            // The ends of every assigned partition in one ListOffsets request (one request
            // per partition kept this thread from polling with hundreds of partitions).
            let mut highs = Vec::new();
            if let Ok(assigned) = consumer.assignment() {
                let mut ends = TopicPartitionList::new();
                for e in assigned.elements() {
                    let _ = ends.add_partition_offset(e.topic(), e.partition(), Offset::End);
                }
                if ends.count() > 0 {
                    if let Ok(found) = consumer.offsets_for_times(ends, Duration::from_secs(2)) {
                        for e in found.elements() {
                            if let Offset::Offset(high) = e.offset() {
                                highs.push((e.topic().to_owned(), e.partition(), high));
                            }
                        }
                    }
                }
            }
            if let Some(stalled) = fetch_stalled(&consumer, &highs, &mut stalls, blocked) {
                tracing::warn!("{stalled}");
                let _ = items.blocking_send(Item::Failed(Failure::Transient(stalled)));
                break;
            }
            if items.try_send(Item::Watermarks(highs)).is_err() && items.is_closed() {
                break;
            }
        }
        if housekeeping {
            consumer.context().send_offsets(&consumer, false);
        }
        if let Some(queue) = &batches {
            if last_forward.elapsed() >= FORWARD_AGAIN_EVERY {
                last_forward = Instant::now();
                if let Err(failed) = forward_again(queue) {
                    let _ = items.blocking_send(Item::Failed(failed));
                    break;
                }
            }
        }
        let timeout = if batch.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        // The group's events (rebalances, commits, errors) and the records of a
        // partition not forwarded to the batch queue come through `poll`; with the batch
        // queue there, it does not wait.
        let polled = consumer.poll(if batches.is_some() {
            Duration::ZERO
        } else {
            timeout
        });
        let mut caught_up = match polled {
            Some(Ok(m)) if batches.is_some() => {
                // Every partition is forwarded before its assignment, so none of its
                // records should come here; taken with the batch queue's records, a
                // partition's could go out of order.
                let what = format!(
                    "{}[{}]@{} came outside the batch queue",
                    m.topic(),
                    m.partition(),
                    m.offset()
                );
                let _ = items.blocking_send(Item::Failed(Failure::Transient(what)));
                break;
            }
            Some(Ok(m)) => {
                push(
                    &mut batch,
                    &mut last_topic,
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.key(),
                    m.payload(),
                );
                false
            }
            Some(Err(e)) => {
                consumer_error(
                    &e.to_string(),
                    ferry_shared::kafka::is_missing_topic(&e),
                    &mut told_waiting,
                    &mut errors,
                );
                false
            }
            None => true,
        };
        if let Some(queue) = &batches {
            let room = MAX_RECORDS_PER_ITEM.saturating_sub(batch.len());
            let wait = if caught_up { timeout } else { Duration::ZERO };
            let taken = queue.consume(wait, room, |r| match r.error {
                None => push(
                    &mut batch,
                    &mut last_topic,
                    r.topic,
                    r.partition,
                    r.offset,
                    r.key,
                    r.payload,
                ),
                Some(code) => {
                    let text = r.payload.map(String::from_utf8_lossy).unwrap_or_default();
                    let e = KafkaError::MessageConsumption(code);
                    consumer_error(
                        &format!("{e}: {text} ({}[{}])", r.topic, r.partition),
                        ferry_shared::kafka::is_missing_topic(&e),
                        &mut told_waiting,
                        &mut errors,
                    );
                }
            });
            // Fewer than there was room for: librdkafka held nothing more.
            caught_up = caught_up && taken < room;
        }
        if batch.len() >= MAX_RECORDS_PER_ITEM {
            if !hand_over(&items, &mut batch, &mut blocked, false) {
                break;
            }
        } else if caught_up && !hand_over(&items, &mut batch, &mut blocked, true) {
            // Everything fetched so far is taken.
            break;
        }
    }
    // The batch queue goes (it holds the consumer, so it goes first in any case, on a
    // panic too); the partitions still forwarded to it drop what reaches it until the
    // unassignment below stops their fetches.
    drop(batches);
    // What the applier committed since the last commit, so that Kafka's offsets are as
    // far as the destination's when the consumer leaves.
    consumer.context().send_offsets(&consumer, true);
    let _ = consumer.unassign();
    consumer.unsubscribe();
    close_within(consumer, CLOSE_WITHIN);
}

/// The consumer thread looks at the clock and its commands every this many records of
/// a batch (and between batches).
const HOUSEKEEPING_EVERY: usize = 256;

/// How long closing the consumer (leaving the group) may take before the thread goes on
/// without it.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Closes `consumer` (leaving its group) on a thread of its own and waits at most
/// `within`. librdkafka's close waits for the group coordinator's answer with no time
/// limit; when the broker is gone, or the client's coordinator connection is stuck after
/// a broker restart, it never ends, and a session (or the process) that waited for it
/// could not stop. Past `within` the close goes on in the background and is logged; the
/// broker expires the member after its session timeout.
fn close_within<C: ConsumerContext + 'static>(consumer: Arc<BaseConsumer<C>>, within: Duration) {
    match finish_within(move || drop(consumer), within) {
        Finished::InTime => {}
        Finished::NoThread => {
            tracing::warn!("could not start a thread to close the kafka consumer; leaving it open");
        }
        Finished::Late => tracing::warn!(
            within_s = within.as_secs(),
            "closing the kafka consumer (leaving the group) did not finish in time; it goes on in the background and the broker expires the member after its session timeout"
        ),
    }
}

/// How [`finish_within`] ended.
#[derive(Debug, PartialEq)]
enum Finished {
    InTime,
    /// Still running in the background.
    Late,
    /// Not started: no thread could be made.
    NoThread,
}

/// Runs `work` on a thread of its own and waits for it at most `within`.
fn finish_within(work: impl FnOnce() + Send + 'static, within: Duration) -> Finished {
    let (done_tx, done_rx) = std_mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("ferry-consumer-close".into())
        .spawn(move || {
            work();
            let _ = done_tx.send(());
        });
    if spawned.is_err() {
        return Finished::NoThread;
    }
    match done_rx.recv_timeout(within) {
        Ok(()) => Finished::InTime,
        Err(_) => Finished::Late,
    }
}

/// How long records may wait past an assigned partition's position that does not move,
/// while this thread polls, before the session starts again with a new consumer.
const CONSUMER_STALL_AFTER: Duration = Duration::from_secs(30);

/// Feeds every assigned partition's position and end (`highs`) to its stall watch; the
/// message naming the first stuck partition, if any (see [`FetchStall`]). `blocked` is
/// how long the thread has waited for the applier so far (the watch's clock stops then).
fn fetch_stalled<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    highs: &[(String, i32, i64)],
    stalls: &mut HashMap<(String, i32), FetchStall>,
    blocked: Duration,
) -> Option<String> {
    let now = Instant::now();
    let clock = now.checked_sub(blocked).unwrap_or(now);
    let positions = consumer.position().ok()?;
    let ends: HashMap<(&str, i32), i64> = highs
        .iter()
        .map(|(t, p, h)| ((t.as_str(), *p), *h))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut stalled = None;
    for e in positions.elements() {
        // No position yet: nothing fetched since the assignment, so nothing to compare.
        let (Offset::Offset(at), Some(&high)) = (e.offset(), ends.get(&(e.topic(), e.partition())))
        else {
            continue;
        };
        let key = (e.topic().to_owned(), e.partition());
        seen.insert(key.clone());
        let watch = stalls
            .entry(key)
            .or_insert_with(|| FetchStall::new(CONSUMER_STALL_AFTER));
        if let Some(waited) = watch.observe(at, high, clock) {
            stalled.get_or_insert_with(|| {
                format!(
                    "the kafka consumer fetched nothing from {}[{}] for {} s while records waited past offset {at} (the partition ends at {high}); starting a new session with a new consumer",
                    e.topic(),
                    e.partition(),
                    waited.as_secs()
                )
            });
        }
    }
    stalls.retain(|k, _| seen.contains(k));
    stalled
}

/// How often every assigned partition is forwarded to the batch queue again: an
/// unassignment's stop clears a partition's forward on librdkafka's thread, possibly
/// after the forward set before the next assignment, and the partition's records then
/// wait in its own queue (in order) until forwarded again.
const FORWARD_AGAIN_EVERY: Duration = Duration::from_millis(100);

/// Forwards every partition assigned to `consumer` to `queue` again (no change for one
/// still forwarded).
fn forward_again<C: ConsumerContext + 'static>(queue: &BatchQueue<C>) -> Result<(), Failure> {
    let assigned = queue
        .consumer()
        .assignment()
        .map_err(|e| kafka_failure("reading the assignment", &e))?;
    for e in assigned.elements() {
        forward(queue, e.topic(), e.partition())?;
    }
    Ok(())
}

/// Forwards one partition's fetch queue to the batch queue; a failure names it.
fn forward<C: ConsumerContext + 'static>(
    queue: &BatchQueue<C>,
    topic: &str,
    partition: i32,
) -> Result<(), Failure> {
    queue.forward(topic, partition).map_err(|e| {
        kafka_failure(
            &format!("forwarding {topic}[{partition}] to the batch queue"),
            &e,
        )
    })
}

/// Adds a record to `batch`, sharing the topic's name with the record before it when it
/// is the same (records come in runs of one partition).
fn push(
    batch: &mut Vec<Record>,
    last_topic: &mut Option<Arc<str>>,
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) {
    let topic = match last_topic {
        Some(t) if **t == *topic => t.clone(),
        _ => {
            let t: Arc<str> = Arc::from(topic);
            *last_topic = Some(t.clone());
            t
        }
    };
    batch.push(Record {
        topic,
        partition,
        offset,
        key: key.map(<[u8]>::to_vec),
        payload: payload.map(<[u8]>::to_vec),
    });
}

/// Logs a consumer error: a missing topic once (the stream's topics are not there yet,
/// its exporter makes them, or were deleted: normal), any other once per interval with
/// the count (every poll answers with it while the broker is down).
fn consumer_error(
    text: &str,
    missing_topic: bool,
    told_waiting: &mut bool,
    errors: &mut ferry_shared::repeats::Repeats,
) {
    if missing_topic {
        if !*told_waiting {
            *told_waiting = true;
            tracing::info!(
                "waiting for the stream's topics (its exporter creates them when it starts)"
            );
        }
        tracing::debug!(error = %text, "subscribed topics not available");
        return;
    }
    match errors.admit(text, std::time::Instant::now()) {
        Some(0) => tracing::warn!(error = %text, "kafka consumer error"),
        Some(again) => tracing::warn!(
            error = %text,
            again,
            "kafka consumer error, still ({again} more since it was last logged)"
        ),
        None => tracing::debug!(error = %text, "kafka consumer error (repeated)"),
    }
}

/// Sends the batch (if any) to the applier, waiting while its channel is full (the wait
/// is added to `blocked`); false when the applier is gone.
fn hand_over(
    items: &mpsc::Sender<Item>,
    batch: &mut Vec<Record>,
    blocked: &mut Duration,
    caught_up: bool,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let records = std::mem::replace(batch, Vec::with_capacity(MAX_RECORDS_PER_ITEM));
    let t = Instant::now();
    let sent = items
        .blocking_send(Item::Records { records, caught_up })
        .is_ok();
    *blocked += t.elapsed();
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_that_hangs_is_left_in_the_background_after_the_deadline() {
        // As librdkafka's close with the group coordinator gone: it never answers.
        let (release, hang) = std_mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let late = finish_within(
            move || {
                let _ = hang.recv();
            },
            Duration::from_millis(200),
        );
        assert_eq!(late, Finished::Late);
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = release.send(());
        assert_eq!(
            finish_within(|| {}, Duration::from_secs(5)),
            Finished::InTime
        );
    }

    #[test]
    fn pattern_escapes_dots() {
        assert_eq!(
            topic_pattern("ferry.m_1-x", "source"),
            "^ferry\\.m_1-x\\.source\\..*"
        );
    }
}
