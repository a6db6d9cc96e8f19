//! The importer's consumer settings.

use std::time::Duration;

use rdkafka::ClientConfig;

/// What the broker gathers for a fetch at the end of the log before it answers, unless
/// `importer.fetch_wait_ms` passed first.
const FETCH_MIN_BYTES: u32 = 256 * 1024;

/// `config` with the importer's consumer settings: those it needs (`group`, no automatic
/// commits or offset stores, committed transactions only) always, and the rest unless
/// `[kafka.properties]` sets them.
pub(super) fn settings(
    mut config: ClientConfig,
    group: &str,
    fetch_wait: Duration,
) -> ClientConfig {
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("partition.assignment.strategy", "range,roundrobin");
    // Batches at the end of the log: the broker holds a fetch until it has
    // FETCH_MIN_BYTES for this consumer or `importer.fetch_wait_ms` passed (and answers
    // at once past that), so a trickle of changes comes in batches of up to that wait
    // instead of one fetch per record. 0: answer as soon as anything is there.
    let (min_bytes, wait_ms) = if fetch_wait.is_zero() {
        (1, 100)
    } else {
        (FETCH_MIN_BYTES, fetch_wait.as_millis().max(1))
    };
    for (key, value) in [
        // A replica that died without leaving the group (SIGKILL, a lost node) holds
        // its partitions until the broker stops hearing from it: 10 s instead of
        // librdkafka's 45 s, so the survivors take them over within seconds
        // (docs/architecture.md has the measured time). Heartbeats come from
        // librdkafka's own thread, so a busy importer does not miss them.
        ("session.timeout.ms", "10000".to_owned()),
        ("heartbeat.interval.ms", "1000".to_owned()),
        // Fetch again long before the local queue runs dry: with one fetch in flight
        // per broker, a broker slow to build a large answer otherwise leaves the
        // workers idle meanwhile.
        ("queued.min.messages", "1000000".to_owned()),
        // The queue's bound: 16 MiB of records, not librdkafka's 64. In a snapshot the
        // exporter makes records faster than the workers write them, so the queue is
        // full from start to end, and each queued record also holds librdkafka's
        // bookkeeping and its share of a fetch's buffers (docs/benchmarks.md,
        // "Changes of 2026-12-07 (sixth session)"). 16 MiB are still a third of a
        // second of the snapshot's records, many fetches ahead of the workers.
        (
            "queued.max.messages.kbytes",
            ferry_shared::kafka::CONSUMER_QUEUE_KBYTES.to_owned(),
        ),
        // And once the queue is over those bounds, fetch again 10 ms later, not 1 s
        // (librdkafka's default), so that a backlog never leaves the workers waiting.
        (
            "fetch.queue.backoff.ms",
            ferry_shared::kafka::FETCH_QUEUE_BACKOFF_MS.to_owned(),
        ),
        ("fetch.min.bytes", min_bytes.to_string()),
        ("fetch.wait.max.ms", wait_ms.to_string()),
    ] {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_is_bounded_and_kafka_properties_win_over_the_defaults() {
        let ours = settings(ClientConfig::new(), "g", Duration::from_millis(50));
        assert_eq!(ours.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(ours.get("queued.min.messages"), Some("1000000"));
        assert_eq!(ours.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(ours.get("fetch.min.bytes"), Some("262144"));
        assert_eq!(ours.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(ours.get("session.timeout.ms"), Some("10000"));
        assert_eq!(ours.get("heartbeat.interval.ms"), Some("1000"));
        assert_eq!(ours.get("group.id"), Some("g"));

        let mut theirs = ClientConfig::new();
        theirs
            .set("queued.max.messages.kbytes", "65536")
            .set("fetch.wait.max.ms", "7")
            .set("group.id", "not-ours")
            .set("isolation.level", "read_uncommitted");
        let theirs = settings(theirs, "g", Duration::ZERO);
        assert_eq!(theirs.get("queued.max.messages.kbytes"), Some("65536"));
        assert_eq!(theirs.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(theirs.get("fetch.min.bytes"), Some("1"));
        // What exactly-once needs is not the user's to change.
        assert_eq!(theirs.get("group.id"), Some("g"));
        assert_eq!(theirs.get("isolation.level"), Some("read_committed"));
    }
}
