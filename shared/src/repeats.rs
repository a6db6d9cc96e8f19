//! Warnings that can come many times a second, such as a Kafka client's error on every
//! poll while the broker is down: the first of each text is logged at once, the same
//! text again at most once per interval, with how many times it came in between. The
//! operator sees the problem, and that it goes on, without a line per poll.

use std::time::{Duration, Instant};

/// How often the same warning is logged again while it keeps coming.
pub const EVERY: Duration = Duration::from_secs(30);

/// The last warning let through, and the repeats of it held back since.
#[derive(Debug)]
pub struct Repeats {
    every: Duration,
    last: Option<(String, Instant)>,
    held: u64,
}

impl Repeats {
    /// Lets the same text through at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Repeats {
            every,
            last: None,
            held: 0,
        }
    }

    /// Whether to log `text` now: `Some(n)` with the repeats of it held back since it
    /// was last logged (0 for a text other than the last one), `None` to hold it back.
    pub fn admit(&mut self, text: &str, now: Instant) -> Option<u64> {
        match &mut self.last {
            Some((last, at)) if last == text => {
                if now.duration_since(*at) < self.every {
                    self.held += 1;
                    return None;
                }
                *at = now;
            }
            _ => {
                self.last = Some((text.to_owned(), now));
                self.held = 0;
            }
        }
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_is_let_through_once_per_interval_with_its_repeats() {
        let mut r = Repeats::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        assert_eq!(r.admit("broker down", at(0)), Some(0));
        for ms in (100..30_000).step_by(100) {
            assert_eq!(r.admit("broker down", at(ms)), None);
        }
        assert_eq!(r.admit("broker down", at(30_000)), Some(299));
        assert_eq!(r.admit("broker down", at(30_100)), None);
        // Another text goes through at once; the first again is new then too.
        assert_eq!(r.admit("auth failed", at(30_200)), Some(0));
        assert_eq!(r.admit("broker down", at(30_300)), Some(0));
    }
}
