//! Telling a consumer that stopped fetching from one that has nothing to fetch.
//!
//! librdkafka's consumer, with partitions assigned (by `assign()` or by a group), now
//! and then fetches nothing more after the broker restarts: the partition stays
//! assigned, no error is raised, and the records past its position never come
//! (librdkafka issue 5153, rust-rdkafka issue 597; seen here in about one run of four
//! of `tests/e2e/tests/kafka_faults.rs` with the broker killed). Only a new consumer
//! reads on. A [`FetchStall`] per partition, fed the consumer's position and the
//! partition's end at each check, says when to make one.

use std::time::{Duration, Instant};

/// Whether one partition's consumer is stuck: records wait past its position and the
/// position has not moved for `after` since they were first seen waiting.
#[derive(Debug, Clone)]
pub struct FetchStall {
    after: Duration,
    /// The position at the last check.
    at: Option<i64>,
    /// Since when records have waited past `at` (None: caught up at the last check).
    lagging_since: Option<Instant>,
}

impl FetchStall {
    /// A watch that calls `after` of records waiting past an unmoving position a stall.
    pub fn new(after: Duration) -> FetchStall {
        FetchStall {
            after,
            at: None,
            lagging_since: None,
        }
    }

    /// Records a check at `now`: the consumer's next offset `at` and the partition's
    /// end `high`. Returns how long records have waited past an unmoving position once
    /// that reaches `after`.
    ///
    /// `now` is the caller's clock: a consumer that was kept from polling (its reader
    /// was busy) passes a clock that did not run meanwhile.
    pub fn observe(&mut self, at: i64, high: i64, now: Instant) -> Option<Duration> {
        let lagging = high > at;
        if self.at != Some(at) || !lagging {
            self.at = Some(at);
            self.lagging_since = lagging.then_some(now);
            return None;
        }
        let since = *self.lagging_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        (waited >= self.after).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn a_position_that_keeps_moving_or_is_at_the_end_is_no_stall() {
        let t = Instant::now();
        let mut s = FetchStall::new(Duration::from_secs(6));
        for (i, pos) in [0, 5, 9, 12, 20, 31].into_iter().enumerate() {
            assert_eq!(s.observe(pos, 40, at(t, 10 * i as u64)), None);
        }
        // Caught up for a long time, then a record arrives: a stall only once it has
        // waited `after`, counted from when it was first seen.
        assert_eq!(s.observe(40, 40, at(t, 100)), None);
        assert_eq!(s.observe(40, 40, at(t, 500)), None);
        assert_eq!(s.observe(40, 41, at(t, 600)), None);
        assert_eq!(s.observe(40, 41, at(t, 603)), None);
        assert_eq!(s.observe(40, 41, at(t, 606)), Some(Duration::from_secs(6)));
    }

    #[test]
    fn records_waiting_past_a_position_that_does_not_move_are_a_stall() {
        let t = Instant::now();
        let mut s = FetchStall::new(Duration::from_secs(6));
        assert_eq!(s.observe(7, 9, at(t, 0)), None);
        assert_eq!(s.observe(7, 9, at(t, 2)), None);
        assert_eq!(s.observe(7, 12, at(t, 5)), None);
        assert_eq!(s.observe(7, 12, at(t, 8)), Some(Duration::from_secs(8)));
        // It moved: the wait starts again.
        assert_eq!(s.observe(8, 12, at(t, 9)), None);
        assert_eq!(s.observe(8, 12, at(t, 14)), None);
        assert_eq!(s.observe(8, 12, at(t, 15)), Some(Duration::from_secs(6)));
    }
}
