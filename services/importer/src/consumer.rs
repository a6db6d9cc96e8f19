//! The Kafka side: one thread owns the consumer, polls it and hands records to the
//! applier over a bounded channel (backpressure: a full channel stops polling).
//!
//! Rebalances run in that thread, inside `poll`. On an assignment the thread reads the
//! partitions' positions from the destination (`ferry_metadata`) and assigns the
//! partitions *at those offsets*, so no record before the stored position is fetched
//! and Kafka's committed offsets are never used to position the consumer. It then
//! sends [`Item::Assigned`] through the same channel as the records, so the applier
//! learns the positions before it sees any record fetched from them.
//!
//! Kafka offsets are committed (asynchronously, for monitoring and tools) only on the
//! applier's request, after the destination transaction that stored them committed.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::error::Failure;
use crate::metadata::{self, Stored};

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
    Records(Vec<Record>),
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

struct Ctx {
    runtime: tokio::runtime::Handle,
    db: Arc<tokio_postgres::Client>,
    group: String,
    items: mpsc::Sender<Item>,
    /// Partitions assigned by the last rebalance, at their stored next offsets: the poll
    /// loop's starting positions for fetch pacing.
    assigned: std::sync::Mutex<Vec<(String, i32, i64)>>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
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
                        metadata::load_positions(&self.db, &self.group, &parts),
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
                if let Err(e) = consumer.assign(&at) {
                    let _ = self
                        .items
                        .blocking_send(Item::Failed(kafka_failure("assigning partitions", &e)));
                    return;
                }
                if let Ok(mut a) = self.assigned.lock() {
                    *a = positions
                        .iter()
                        .map(|p| (p.topic.clone(), p.partition, p.next_offset))
                        .collect();
                }
                tracing::info!(
                    partitions = positions.len(),
                    "partitions assigned at the positions stored in the destination"
                );
                let _ = self.items.blocking_send(Item::Assigned(positions));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
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
    // Kafka errors surfacing here are transport or group-coordination problems;
    // librdkafka retries most itself, and a fresh session fixes the rest.
    Failure::Transient(format!("kafka: {what}: {e}"))
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

/// topic -> partition -> next offset to poll.
type Next = HashMap<String, HashMap<i32, i64>>;

/// Records handed over in one [`Item::Records`] at most.
pub(crate) const MAX_RECORDS_PER_ITEM: usize = 1024;

/// When the consumer has handed over everything fetched and fewer than this many
/// records came since fetching resumed, it checks whether it is at the end of the log.
const PACE_BELOW: usize = 4 * MAX_RECORDS_PER_ITEM;

/// The running consumer thread.
pub(crate) struct ConsumerThread {
    pub items: mpsc::Receiver<Item>,
    pub commands: std_mpsc::Sender<Command>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConsumerThread {
    /// Subscribes to `pattern` in `group` and starts polling.
    pub(crate) fn start(
        mut config: ClientConfig,
        group: &str,
        pattern: &str,
        db: Arc<tokio_postgres::Client>,
        capacity: usize,
        fetch_wait: Duration,
    ) -> Result<ConsumerThread, Failure> {
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .set("topic.metadata.refresh.interval.ms", "5000")
            .set("partition.assignment.strategy", "range,roundrobin");
        // Fetch again long before the local queue runs dry (its size stays bounded by
        // queued.max.messages.kbytes): with one fetch in flight per broker, a broker
        // slow to build a large answer otherwise leaves the workers idle meanwhile.
        if config.get("queued.min.messages").is_none() {
            config.set("queued.min.messages", "1000000");
        }
        ferry_shared::kafka::accept_any_fetch_size(&mut config);
        let (tx, rx) = mpsc::channel(capacity.max(16));
        let ctx = Ctx {
            runtime: tokio::runtime::Handle::current(),
            db,
            group: group.to_owned(),
            items: tx.clone(),
            assigned: std::sync::Mutex::new(Vec::new()),
        };
        let consumer: BaseConsumer<Ctx> = config
            .create_with_context(ctx)
            .map_err(|e| kafka_failure("creating the consumer", &e))?;
        consumer
            .subscribe(&[pattern])
            .map_err(|e| kafka_failure("subscribing", &e))?;
        let (cmd_tx, cmd_rx) = std_mpsc::channel::<Command>();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-importer-consumer".into())
            .spawn(move || poll_loop(consumer, tx, cmd_rx, stop2, fetch_wait))
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

/// Polls the consumer and hands records over in batches.
///
/// Fetch pacing: once everything fetched was handed over, and the records since
/// fetching last resumed are few, the assigned partitions are paused for `fetch_wait`
/// (pausing drops nothing the applier has not seen: librdkafka resumes from the offset
/// after the last record polled). This is Kafka's `fetch.min.bytes` +
/// `fetch.wait.max.ms`, done here because some Kafka-protocol brokers (the local test
/// broker among them) answer a fetch at once even when it is empty, so librdkafka would
/// fetch thousands of times a second at the end of the log, one small batch each.
fn poll_loop(
    consumer: BaseConsumer<Ctx>,
    items: mpsc::Sender<Item>,
    commands: std_mpsc::Receiver<Command>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    fetch_wait: Duration,
) {
    let stopped = || stop.load(std::sync::atomic::Ordering::SeqCst);
    let mut last_watermarks = std::time::Instant::now();
    let mut batch: Vec<Record> = Vec::with_capacity(MAX_RECORDS_PER_ITEM);
    let mut since_resume = 0usize;
    // topic -> partition -> next offset to poll, for fetch pacing.
    let mut next: Next = HashMap::new();
    let mut last_topic: Option<Arc<str>> = None;
    while !stopped() {
        if last_watermarks.elapsed() >= Duration::from_secs(5) {
            last_watermarks = std::time::Instant::now();
            let mut highs = Vec::new();
            if let Ok(assigned) = consumer.assignment() {
                for e in assigned.elements() {
                    if let Ok((_, high)) =
                        consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1))
                    {
                        highs.push((e.topic().to_owned(), e.partition(), high));
                    }
                }
            }
            if items.try_send(Item::Watermarks(highs)).is_err() && items.is_closed() {
                break;
            }
        }
        run_commands(&consumer, &commands);
        // With pacing on, a poll with nothing to hand over waits about as long as a
        // pause would: while it waits, librdkafka fetches.
        let timeout = if !batch.is_empty() {
            Duration::ZERO
        } else if fetch_wait.is_zero() {
            Duration::from_millis(100)
        } else {
            fetch_wait.clamp(Duration::from_millis(5), Duration::from_millis(100))
        };
        let polled = consumer.poll(timeout);
        if let Ok(mut a) = consumer.context().assigned.lock() {
            if !a.is_empty() {
                next.clear();
                for (t, p, o) in a.drain(..) {
                    next.entry(t).or_default().insert(p, o);
                }
            }
        }
        match polled {
            Some(Ok(m)) => {
                if let Some(n) = next
                    .get_mut(m.topic())
                    .and_then(|t| t.get_mut(&m.partition()))
                {
                    *n = m.offset() + 1;
                }
                // Records come in runs of one partition: share the topic's name.
                let topic = match &last_topic {
                    Some(t) if **t == *m.topic() => t.clone(),
                    _ => {
                        let t: Arc<str> = Arc::from(m.topic());
                        last_topic = Some(t.clone());
                        t
                    }
                };
                batch.push(Record {
                    topic,
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                });
                since_resume += 1;
                if batch.len() >= MAX_RECORDS_PER_ITEM && !hand_over(&items, &mut batch) {
                    break;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consumer error");
            }
            None => {
                // Everything fetched so far is polled.
                if !hand_over(&items, &mut batch) {
                    break;
                }
                if !fetch_wait.is_zero() && since_resume < PACE_BELOW {
                    pause_fetching(&consumer, &commands, fetch_wait, &stopped, &next);
                }
                since_resume = 0;
            }
        }
    }
    let _ = consumer.unassign();
    consumer.unsubscribe();
    drop(consumer);
}

/// Sends the batch (if any) to the applier, waiting while its channel is full; false
/// when the applier is gone.
fn hand_over(items: &mpsc::Sender<Item>, batch: &mut Vec<Record>) -> bool {
    if batch.is_empty() {
        return true;
    }
    let records = std::mem::replace(batch, Vec::with_capacity(MAX_RECORDS_PER_ITEM));
    items.blocking_send(Item::Records(records)).is_ok()
}

fn run_commands(consumer: &BaseConsumer<Ctx>, commands: &std_mpsc::Receiver<Command>) {
    while let Ok(cmd) = commands.try_recv() {
        match cmd {
            Command::Commit(offsets) => {
                let mut tpl = TopicPartitionList::new();
                for (t, p, o) in &offsets {
                    let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
                }
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::debug!(error = %e, "committing offsets to kafka (monitoring only)");
                }
            }
        }
    }
}

/// Unless an assigned partition has records past what was polled (one ListOffsets
/// request), pauses fetching on every assigned partition for `wait`, then for as long
/// as none has (checked every `wait`), then resumes it.
fn pause_fetching(
    consumer: &BaseConsumer<Ctx>,
    commands: &std_mpsc::Receiver<Command>,
    wait: Duration,
    stopped: &dyn Fn() -> bool,
    next: &Next,
) {
    let Ok(assigned) = consumer.assignment() else {
        return;
    };
    // Records past the polled ones (a backlog being read, a fetch under way): no pause.
    if assigned.count() == 0 || more(consumer, next) || consumer.pause(&assigned).is_err() {
        return;
    }
    let idle_since = std::time::Instant::now();
    loop {
        let until = std::time::Instant::now() + wait;
        loop {
            run_commands(consumer, commands);
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || stopped() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        // Come back to `poll` now and then even when idle: rebalances and the
        // watermark report run there.
        if stopped() || idle_since.elapsed() >= Duration::from_secs(1) || more(consumer, next) {
            break;
        }
    }
    // Partitions revoked meanwhile are no longer in the assignment; resume what is.
    if let Ok(assigned) = consumer.assignment() {
        let _ = consumer.resume(&assigned);
    }
}

/// Whether an assigned partition's end is past the next offset to poll (true when
/// unknown).
fn more(consumer: &BaseConsumer<Ctx>, next: &Next) -> bool {
    let Ok(assigned) = consumer.assignment() else {
        return true;
    };
    let mut latest = TopicPartitionList::new();
    for e in assigned.elements() {
        if latest
            .add_partition_offset(e.topic(), e.partition(), Offset::End)
            .is_err()
        {
            return true;
        }
    }
    let Ok(ends) = consumer.offsets_for_times(latest, Duration::from_secs(5)) else {
        return true;
    };
    ends.elements().iter().any(|e| {
        let known = next.get(e.topic()).and_then(|t| t.get(&e.partition()));
        match (e.offset(), known) {
            (Offset::Offset(end), Some(&n)) => end > n,
            _ => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_escapes_dots() {
        assert_eq!(
            topic_pattern("ferry.m_1-x", "source"),
            "^ferry\\.m_1-x\\.source\\..*"
        );
    }
}
