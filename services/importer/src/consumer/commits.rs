//! Kafka's committed offsets: what the applier's destination commits reached, sent to
//! Kafka at most every [`COMMIT_EVERY`] (the consumer thread and its callbacks use
//! them, see the parent module).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

/// Kafka's committed offsets serve monitoring, tools and the exporter's snapshot lead
/// (positions live in the destination): they are sent at most this often, the newest
/// of each partition. One commit per destination commit, hundreds a second under
/// one-row transactions, queued OffsetCommit requests on the group coordinator's
/// connection ahead of the heartbeats until the group session timed out and the
/// importer stopped applying for 45 s while it rejoined (docs/benchmarks.md). Short
/// beside the exporter's lead check (every 500 ms against `exporter.snapshot_max_lead`).
pub(super) const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// The offsets the applier asked to commit since the last commit, newest per partition,
/// and the newest the broker stored: an offset not above that one is never sent, so a
/// refused commit sent again cannot move a partition back.
#[derive(Debug)]
pub(super) struct PendingCommits {
    newest: HashMap<(String, i32), i64>,
    stored: HashMap<(String, i32), i64>,
    last: Instant,
}

impl PendingCommits {
    pub(super) fn new(now: Instant) -> Self {
        PendingCommits {
            newest: HashMap::new(),
            stored: HashMap::new(),
            last: now,
        }
    }

    pub(super) fn add(&mut self, offsets: Vec<(String, i32, i64)>) {
        for (topic, partition, offset) in offsets {
            let key = (topic, partition);
            if self.stored.get(&key).is_some_and(|&s| s >= offset) {
                continue;
            }
            let at = self.newest.entry(key).or_insert(offset);
            *at = (*at).max(offset);
        }
    }

    /// The broker stored these offsets.
    pub(super) fn stored(&mut self, offsets: Vec<(String, i32, i64)>) {
        for (topic, partition, offset) in offsets {
            let key = (topic, partition);
            if self.newest.get(&key).is_some_and(|&n| n <= offset) {
                self.newest.remove(&key);
            }
            let at = self.stored.entry(key).or_insert(offset);
            *at = (*at).max(offset);
        }
    }

    /// What to commit now: the newest offsets, once [`COMMIT_EVERY`] passed since the
    /// last commit and something is pending.
    pub(super) fn due(&mut self, now: Instant) -> Option<HashMap<(String, i32), i64>> {
        if self.newest.is_empty() || now.duration_since(self.last) < COMMIT_EVERY {
            return None;
        }
        self.last = now;
        self.take()
    }

    /// Everything pending, whatever the time.
    pub(super) fn take(&mut self) -> Option<HashMap<(String, i32), i64>> {
        (!self.newest.is_empty()).then(|| std::mem::take(&mut self.newest))
    }
}

/// Commits `newest` (async) for the partitions `consumer` holds now. The applier's
/// commits for partitions already revoked (it writes what it held after the
/// revocation) are left out: sent later, they could overwrite what the new owner
/// committed since, so Kafka's offset of such a partition waits for the new owner's
/// first commit instead.
pub(super) fn commit_held<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    newest: HashMap<(String, i32), i64>,
) {
    let Ok(assigned) = consumer.assignment() else {
        return;
    };
    let elements = assigned.elements();
    let held: HashSet<(&str, i32)> = elements
        .iter()
        .map(|e| (e.topic(), e.partition()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &newest {
        if held.contains(&(t.as_str(), *p)) {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
    }
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "committing offsets to kafka (monitoring only)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_committed_at_most_once_an_interval_the_newest_per_partition() {
        let t0 = Instant::now();
        let mut pending = PendingCommits::new(t0);
        let topic = || "ferry.m.source.public.t".to_owned();
        // Many destination commits within the interval: nothing is sent yet.
        let step = COMMIT_EVERY / 1000;
        for i in 0..500 {
            pending.add(vec![(topic(), 0, 10 + i), (topic(), 1, 5 + i)]);
            assert_eq!(pending.due(t0 + step * i as u32), None);
        }
        // Out of order: an older offset does not move a partition back.
        pending.add(vec![(topic(), 1, 7)]);
        let sent = pending.due(t0 + COMMIT_EVERY).unwrap_or_default();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent.get(&(topic(), 0)), Some(&509));
        assert_eq!(sent.get(&(topic(), 1)), Some(&504));
        // Nothing new: nothing to send, however long it waits.
        assert_eq!(pending.due(t0 + COMMIT_EVERY * 5), None);
        // Something new right after a commit waits for the next interval...
        pending.add(vec![(topic(), 2, 3)]);
        assert_eq!(pending.due(t0 + COMMIT_EVERY + step), None);
        // ...unless the consumer is leaving, which takes everything at once.
        let last = pending.take().unwrap_or_default();
        assert_eq!(last.get(&(topic(), 2)), Some(&3));
        assert_eq!(pending.take(), None);
    }

    #[test]
    fn a_refused_commit_is_sent_again_unless_a_newer_one_was_stored() {
        let t0 = Instant::now();
        let mut pending = PendingCommits::new(t0);
        let p = |o: i64| vec![("ferry.m.source.public.t".to_owned(), 0, o)];
        // 100 refused, then 150 stored: 100 is not sent again, in either order.
        pending.add(p(100));
        pending.stored(p(150));
        assert_eq!(pending.take(), None);
        pending.add(p(100));
        assert_eq!(pending.take(), None);
        // Refused alone: sent with the next commit.
        pending.add(p(180));
        assert_eq!(
            pending
                .due(t0 + COMMIT_EVERY)
                .and_then(|n| n.into_values().next()),
            Some(180)
        );
        // A newer offset waiting stays when an older one is stored.
        pending.add(p(200));
        pending.stored(p(180));
        assert_eq!(
            pending.take().and_then(|n| n.into_values().next()),
            Some(200)
        );
    }
}
