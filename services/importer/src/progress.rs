//! What the importer shows while it runs: the metrics of the seeds' import table
//! (total imported events, this run, ingestion rate over 3 and 10 minutes, time taken,
//! remaining events, estimated time to catch up), refreshed in place on a terminal and a
//! log line otherwise; and heartbeats with positions to `<prefix>._status`.
//!
//! Remaining events are the group's: every partition's high watermark minus the position
//! stored in the destination (by any replica), over the stream's topics, so an instance
//! that holds few or no partitions never reports the group as caught up. With
//! transactional producers the control markers count too, so the figure is an upper
//! bound that reaches 0 when the group has caught up. The line and the heartbeat also say
//! how many partitions this instance holds.

use std::collections::HashMap;

use ferry_shared::rate::RateWindow;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub use ferry_shared::heartbeat::{
    importer_heartbeat_key, instance_name, ErrorRecord, ImporterHeartbeat, PartitionPosition,
    ServiceError,
};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Counters and samples for the metrics.
#[derive(Debug)]
pub(crate) struct Progress {
    started: Instant,
    pub(crate) this_run: u64,
    /// Snapshot rows written with binary COPY in this run.
    pub(crate) binary_copy_rows: u64,
    /// Snapshot rows written with text COPY in this run (types or values without an
    /// exact binary form).
    pub(crate) text_copy_rows: u64,
    rates: RateWindow,
    /// (topic, partition) -> high watermark.
    pub(crate) highs: HashMap<(String, i32), i64>,
    interactive: bool,
    lines_drawn: usize,
    /// The last transient error retried, until the importer runs successfully again.
    pub(crate) error: Option<ServiceError>,
    /// When the process started, milliseconds since the epoch.
    pub(crate) started_at_ms: i64,
    /// When it last ran successfully (see [`Progress::succeeded`]); 0: not yet.
    ok_at_ms: i64,
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}

impl Progress {
    pub(crate) fn new() -> Self {
        Progress {
            started: Instant::now(),
            this_run: 0,
            binary_copy_rows: 0,
            text_copy_rows: 0,
            rates: RateWindow::new(),
            highs: HashMap::new(),
            interactive: std::io::stderr().is_terminal(),
            lines_drawn: 0,
            error: None,
            started_at_ms: now_ms(),
            ok_at_ms: 0,
        }
    }

    /// The importer did its work successfully (a batch committed, or a session applied
    /// for a while without failing): the last error is over.
    pub(crate) fn succeeded(&mut self) {
        self.error = None;
        self.ok_at_ms = now_ms();
    }

    /// Takes a sample; keeps 10 minutes of them.
    pub(crate) fn sample(&mut self) {
        self.rates.record(Instant::now(), self.this_run);
    }

    /// Shows the metrics and returns the heartbeat to send. `group_remaining` is what
    /// the whole group has left (see the module doc), when it could be read.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn report(
        &mut self,
        destination: &str,
        group: &str,
        total_imported: i64,
        positions: Vec<PartitionPosition>,
        group_remaining: Option<i64>,
        phase: &str,
        stream: Option<&str>,
    ) -> ImporterHeartbeat {
        self.sample();
        // A session running again after a transient error has not succeeded yet.
        let phase = if phase == "applying" && self.error.is_some() {
            "retrying"
        } else {
            phase
        };
        let rate_3m = self.rates.per_second(Duration::from_secs(180));
        let rate_10m = self.rates.per_second(Duration::from_secs(600));
        let own: i64 = positions
            .iter()
            .map(|p| {
                self.highs
                    .get(&(p.topic.clone(), p.partition))
                    .map_or(0, |h| (h - p.next_offset).max(0))
            })
            .sum();
        let remaining = group_remaining.unwrap_or(own);
        let held = positions.len();
        let eta = if phase != "applying" {
            phase.to_owned()
        } else if held == 0 {
            "none here: this instance holds no partitions".to_owned()
        } else if remaining == 0 {
            "caught up".to_owned()
        } else if own == 0 {
            // This instance's partitions are done; the rest belongs to other replicas.
            "this instance's partitions caught up".to_owned()
        } else if rate_3m > 0.0 {
            // This instance's own backlog at its own rate (the group's backlog is spread
            // over its replicas).
            duration(Duration::from_secs_f64(own as f64 / rate_3m))
        } else {
            "unknown".to_owned()
        };
        let taken = duration(self.started.elapsed());
        if self.interactive {
            let mut err = std::io::stderr().lock();
            if self.lines_drawn > 0 {
                let _ = write!(err, "\x1b[{}A\x1b[J", self.lines_drawn);
            }
            let rows = [
                ("total imported events", total_imported.to_string()),
                ("imported in this run", self.this_run.to_string()),
                (
                    "ingestion rate (last 3 min)",
                    format!("{rate_3m:.0} events/s"),
                ),
                (
                    "ingestion rate (last 10 min)",
                    format!("{rate_10m:.0} events/s"),
                ),
                ("time taken", taken.clone()),
                ("partitions held", held.to_string()),
                ("remaining events (group)", remaining.to_string()),
                ("estimated time to catch up", eta.clone()),
            ];
            let _ = writeln!(err, "import to {destination} ({group})");
            for (k, v) in &rows {
                let _ = writeln!(err, "  {k:<30} {v}");
            }
            self.lines_drawn = rows.len() + 1;
        } else {
            tracing::info!(
                total_imported,
                this_run = self.this_run,
                rate_3m = format!("{rate_3m:.0}/s"),
                rate_10m = format!("{rate_10m:.0}/s"),
                time_taken = %taken,
                partitions = held,
                remaining,
                eta = %eta,
                snapshot_rows_binary_copy = self.binary_copy_rows,
                snapshot_rows_text_copy = self.text_copy_rows,
                "import progress"
            );
        }
        ImporterHeartbeat {
            role: "importer".into(),
            destination: destination.to_owned(),
            group: group.to_owned(),
            phase: phase.to_owned(),
            stream: stream.map(str::to_owned),
            instance: instance_name(),
            total_imported,
            imported_this_run: self.this_run,
            rate_3m,
            rate_10m,
            remaining,
            partitions_held: u32::try_from(held).unwrap_or(u32::MAX),
            positions,
            ts_ms: now_ms(),
            started_at_ms: self.started_at_ms,
            error: self.error.clone(),
            ok_at_ms: self.ok_at_ms,
        }
    }
}

use ferry_shared::clock::now_ms;

/// Reports the error this process stops on where the operator looks: a last heartbeat
/// (phase `failed`, with the error) and an [`ErrorRecord`] under a key of its own, which
/// a restarted process's heartbeats do not overwrite (see [`ferry_shared::heartbeat`]).
/// Waits until the broker has both, at most 10 s.
pub(crate) async fn send_failure(
    config: &ferry_shared::config::Config,
    destination: ferry_shared::topics::Destination,
    class: ferry_shared::error_policy::ErrorClass,
    message: &str,
    started_at_ms: i64,
) {
    let topics = ferry_shared::topics::Topics::new(config.migration.topic_prefix());
    let kafka = config.kafka.client_config();
    let error = ServiceError::of(class, message);
    let record = ErrorRecord {
        role: "importer".into(),
        unit: destination.as_str().to_owned(),
        instance: instance_name(),
        error: error.clone(),
    };
    let within = Duration::from_secs(10);
    let status_topic = topics.status();
    let published = ferry_shared::heartbeat::publish_error(&kafka, &status_topic, &record, within);
    let Ok(producer) = kafka.create::<FutureProducer>() else {
        published.await;
        return;
    };
    let beat = ImporterHeartbeat {
        role: "importer".into(),
        destination: destination.as_str().to_owned(),
        group: topics.import_group(destination),
        phase: "failed".into(),
        stream: None,
        instance: record.instance.clone(),
        total_imported: 0,
        imported_this_run: 0,
        rate_3m: 0.0,
        rate_10m: 0.0,
        remaining: 0,
        partitions_held: 0,
        positions: Vec::new(),
        ts_ms: now_ms(),
        started_at_ms,
        error: Some(error),
        ok_at_ms: 0,
    };
    let json = serde_json::to_string(&beat).unwrap_or_default();
    let key = importer_heartbeat_key(&beat.destination, &beat.instance);
    // Both at once, each bounded: an unreachable broker must not hold the exit for
    // message.timeout.ms.
    let (written, _) = tokio::join!(
        published,
        tokio::time::timeout(
            within,
            producer.send(
                FutureRecord::to(&status_topic).key(&key).payload(&json),
                within,
            ),
        )
    );
    if !written {
        tracing::warn!(
            "the error could not be written to {status_topic}: ferry cutover status will not show it"
        );
    }
}

/// Sends a heartbeat without waiting for delivery (a lost heartbeat is replaced by the
/// next one).
pub(crate) fn send_heartbeat(producer: &FutureProducer, topic: &str, beat: &ImporterHeartbeat) {
    let Ok(json) = serde_json::to_string(beat) else {
        return;
    };
    let key = importer_heartbeat_key(&beat.destination, &beat.instance);
    if let Err((e, _)) = producer.send_result(FutureRecord::to(topic).key(&key).payload(&json)) {
        tracing::debug!(error = %e, "heartbeat not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(partition: i32, next_offset: i64) -> PartitionPosition {
        PartitionPosition {
            topic: "t".into(),
            partition,
            next_offset,
            last_vsn: 0,
        }
    }

    #[test]
    fn an_instance_without_partitions_reports_the_group_s_backlog_never_caught_up() {
        let mut p = Progress::new();
        let beat = p.report(
            "target",
            "g",
            10,
            Vec::new(),
            Some(436_636),
            "applying",
            Some("source"),
        );
        assert_eq!(beat.partitions_held, 0);
        assert_eq!(beat.remaining, 436_636);
        // Caught up or not, an instance that holds nothing says so.
        let beat = p.report(
            "target",
            "g",
            10,
            Vec::new(),
            Some(0),
            "applying",
            Some("source"),
        );
        assert_eq!((beat.partitions_held, beat.remaining), (0, 0));
    }

    #[test]
    fn an_error_stays_in_heartbeats_until_the_importer_succeeds() {
        let mut p = Progress::new();
        p.error = Some(ServiceError::transient("connection refused"));
        let beat = p.report("target", "g", 0, Vec::new(), None, "applying", None);
        assert_eq!(beat.phase, "retrying");
        assert_eq!(beat.error.map(|e| e.kind), Some("transient".to_owned()));
        assert_eq!(beat.ok_at_ms, 0);
        p.succeeded();
        let beat = p.report("target", "g", 0, Vec::new(), None, "applying", None);
        assert_eq!(beat.phase, "applying");
        assert_eq!(beat.error, None);
        assert!(beat.ok_at_ms > 0);
    }

    #[test]
    fn remaining_is_the_group_s_when_known_and_this_instance_s_otherwise() {
        let mut p = Progress::new();
        p.highs.insert(("t".into(), 0), 100);
        p.highs.insert(("t".into(), 1), 50);
        let held = vec![position(0, 90), position(1, 50)];
        let beat = p.report("target", "g", 0, held.clone(), Some(500), "applying", None);
        assert_eq!((beat.partitions_held, beat.remaining), (2, 500));
        let beat = p.report("target", "g", 0, held, None, "applying", None);
        assert_eq!(beat.remaining, 10);
    }
}
