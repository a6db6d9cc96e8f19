//! Event rates over sliding windows (the seeds' "rate over the last 3 and 10 minutes"),
//! shared by every service's progress table and heartbeats.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The longest window any report asks for; older samples are dropped.
const KEEP: Duration = Duration::from_secs(600);
/// Spans shorter than this give no rate (a rate over milliseconds is noise).
const MIN_SPAN: Duration = Duration::from_millis(500);

/// `(time, running count)` samples of the last 10 minutes.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// An empty window.
    pub fn new() -> Self {
        RateWindow::default()
    }

    /// Records the running count at `now` and drops samples older than 10 minutes.
    pub fn record(&mut self, now: Instant, count: u64) {
        self.samples.push_back((now, count));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > KEEP)
        {
            self.samples.pop_front();
        }
    }

    /// Events per second over the last `window`, measured from the oldest sample inside
    /// it to the newest; 0 when that span is under half a second.
    pub fn per_second(&self, window: Duration) -> f64 {
        let Some(&(now, latest)) = self.samples.back() else {
            return 0.0;
        };
        match self
            .samples
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= window)
        {
            Some(&(t, n)) if now.duration_since(t) >= MIN_SPAN => {
                latest.saturating_sub(n) as f64 / now.duration_since(t).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_use_the_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::new();
        assert_eq!(w.per_second(Duration::from_secs(180)), 0.0);
        w.record(t0, 0);
        w.record(t0 + Duration::from_secs(10), 1000);
        assert!((w.per_second(Duration::from_secs(180)) - 100.0).abs() < 1e-9);
        w.record(t0 + Duration::from_secs(300), 1000);
        // Last 3 minutes: only the newest sample is inside, so no span, no rate.
        assert_eq!(w.per_second(Duration::from_secs(180)), 0.0);
        assert!((w.per_second(Duration::from_secs(600)) - 1000.0 / 300.0).abs() < 1e-9);
        // Samples older than 10 minutes are dropped.
        w.record(t0 + Duration::from_secs(900), 4000);
        assert!((w.per_second(Duration::from_secs(600)) - 3000.0 / 600.0).abs() < 1e-9);
    }
}
