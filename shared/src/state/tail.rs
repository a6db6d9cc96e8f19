//! Tailing a compacted one-partition topic (`_state`, `_status`, `_schemas`) on a
//! thread of its own, publishing a view of the latest value of every key.
//!
//! librdkafka's consumer sometimes fetches nothing more after the broker restarts
//! ([`crate::fetch_stall`]; a tail here missed a cutover request that way). So the tail
//! compares its position with the
//! partition's end every [`STALL_CHECK_EVERY`]: when records wait past a position that
//! has not moved for [`STALL_AFTER`], it drops the consumer and reads the topic again
//! with a new one (a compacted topic is small; the view it publishes meanwhile stays the
//! last one, and is replaced once the new consumer has caught up).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch as tokio_watch;

use crate::fetch_stall::FetchStall;
use crate::shutdown::Shutdown;

/// Tails the compacted `topic` (one partition) on a background thread until
/// `shutdown`, publishing `view(latest value of every key)`: first `None`, then a view
/// once the topic was read up to the end it had when the call was made, then a new one
/// whenever records arrive. A topic that does not exist yet reads as empty.
pub fn tail_compacted<T, F>(
    config: &ClientConfig,
    topic: &str,
    shutdown: Shutdown,
    view: F,
) -> tokio_watch::Receiver<Option<T>>
where
    T: Send + Sync + 'static,
    F: Fn(&HashMap<Vec<u8>, Vec<u8>>) -> T + Send + 'static,
{
    let (tx, rx) = tokio_watch::channel(None);
    let config = config.clone();
    let topic = topic.to_owned();
    std::thread::Builder::new()
        .name("ferry-tail".into())
        .spawn(move || tail(config, topic, tx, shutdown, view))
        .ok();
    rx
}

fn tail<T, F>(
    config: ClientConfig,
    topic: String,
    tx: tokio_watch::Sender<Option<T>>,
    shutdown: Shutdown,
    view: F,
) where
    F: Fn(&HashMap<Vec<u8>, Vec<u8>>) -> T,
{
    let mut records: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    while !shutdown.is_triggered() && !tx.is_closed() {
        let consumer: BaseConsumer<crate::kafka::QuietContext> = match config
            .clone()
            .set("group.id", "ferry-state-reader")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // End-of-partition events: the tail has fetched to the end the broker has.
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            // The broker holds a fetch at the end of the log until a record arrives (it
            // answers at once when one does), so an idle tail costs one request per
            // interval and a change reaches the reader without delay.
            .set("fetch.wait.max.ms", "500")
            // A partition the broker reported unknown while it restarted is fetched
            // again only once the metadata shows it: within 5 s, not librdkafka's
            // default 5 minutes (a tail that missed a cutover request for minutes stalled
            // the cutover in the broker-restart test).
            .set("topic.metadata.refresh.interval.ms", "5000")
            .create_with_context(crate::kafka::QuietContext)
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "creating a kafka consumer for {topic}; retrying");
                if !sleep_unless(Duration::from_secs(1), &shutdown, &tx) {
                    return;
                }
                continue;
            }
        };
        // The end to reach before the first view is published.
        let end = match consumer.fetch_watermarks(&topic, 0, crate::kafka::TIMEOUT) {
            Ok((_, high)) => high,
            Err(e) => {
                // A missing topic is an empty state; any other failure (a timeout, the
                // broker restarting) says nothing about the state: try again.
                use rdkafka::types::RDKafkaErrorCode as Code;
                let missing = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition
                    )
                );
                if missing && tx.borrow().is_none() {
                    tracing::debug!(error = %e, "{topic} does not exist yet: an empty state");
                    tx.send_replace(Some(view(&records)));
                } else if !missing {
                    tracing::debug!(error = %e, "reading the end of {topic}; retrying");
                }
                if !sleep_unless(Duration::from_secs(1), &shutdown, &tx) {
                    return;
                }
                continue;
            }
        };
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&topic, 0, Offset::Beginning)
            .is_err()
            || consumer.assign(&tpl).is_err()
        {
            if !sleep_unless(Duration::from_secs(1), &shutdown, &tx) {
                return;
            }
            continue;
        }
        records.clear();
        let mut caught_up = false;
        let mut next = 0i64;
        let mut at_end = false;
        let mut stall = FetchStall::new(STALL_AFTER);
        let mut last_check = Instant::now();
        loop {
            if shutdown.is_triggered() || tx.is_closed() {
                return;
            }
            let mut changed = false;
            match consumer.poll(POLL_INTERVAL) {
                None => {}
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end = true,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "reading {topic}");
                    if !sleep_unless(Duration::from_millis(200), &shutdown, &tx) {
                        return;
                    }
                }
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    if let Some(key) = m.key() {
                        match m.payload() {
                            Some(v) => {
                                records.insert(key.to_vec(), v.to_vec());
                            }
                            None => {
                                records.remove(key);
                            }
                        }
                        changed = true;
                    }
                }
            }
            // Caught up once the end seen at the start is passed: by the last record, by
            // the consumer's position (compaction removes records), or by an
            // end-of-partition event, which comes only after a fetch reached the end the
            // broker has (a compacted-away tombstone at the very end).
            if !caught_up {
                let at = position(&consumer, &topic).max(next);
                if end == 0 || at >= end || at_end {
                    caught_up = true;
                    changed = true;
                }
            }
            if caught_up && changed {
                tx.send_replace(Some(view(&records)));
            }
            if last_check.elapsed() >= STALL_CHECK_EVERY {
                last_check = Instant::now();
                let at = position(&consumer, &topic).max(next);
                // Unanswered (the broker is down): nothing learnt, the next check asks.
                if let Ok((_, high)) = consumer.fetch_watermarks(&topic, 0, STALL_PROBE_TIMEOUT) {
                    if let Some(waited) = stall.observe(at, high, Instant::now()) {
                        tracing::warn!(
                            topic = %topic,
                            position = at,
                            end = high,
                            waited_s = waited.as_secs(),
                            "the consumer of {topic} fetched nothing while records waited past its position; reading the topic again with a new consumer"
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// How often a tail compares its position with the partition's end.
const STALL_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long records may wait past a position that does not move before the consumer is
/// replaced (a healthy tail fetches a new record within a fetch, milliseconds).
const STALL_AFTER: Duration = Duration::from_secs(6);

/// How long a check waits for the partition's end.
const STALL_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The consumer's next offset in the partition (0 before its first fetch).
fn position<C: rdkafka::consumer::ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> i64 {
    consumer
        .position()
        .ok()
        .and_then(|pos| {
            pos.find_partition(topic, 0).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
        })
        .unwrap_or(0)
}

/// How long one poll of a tail waits before it checks for shutdown again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Sleeps `d` in short steps; false when the tail should stop.
fn sleep_unless<T>(d: Duration, shutdown: &Shutdown, tx: &tokio_watch::Sender<Option<T>>) -> bool {
    let until = Instant::now() + d;
    loop {
        if shutdown.is_triggered() || tx.is_closed() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}
