//! What the exporter shows while it runs: a small table refreshed in place on a
//! terminal (a log line otherwise), and heartbeats with positions to `_status`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_shared::heartbeat::{heartbeat_key, instance_name, ExporterHeartbeat, ServiceError};
use ferry_shared::position::{Lsn, Vsn};
use ferry_shared::rate::RateWindow;
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::Stream;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use ferry_shared::clock::now_ms;

/// Counters shared by the stamper, the checkpoint writer and the reporter.
#[derive(Debug)]
pub struct Progress {
    /// Events stamped by this run.
    pub events: AtomicU64,
    /// Last VSN stamped.
    pub last_vsn: AtomicU64,
    /// LSN of the last stored checkpoint.
    pub lsn: AtomicU64,
    phase: Mutex<&'static str>,
    /// The last error, reported in heartbeats until the exporter runs successfully again.
    error: Mutex<Option<ServiceError>>,
    /// When the process started.
    started_at_ms: i64,
    /// When it last ran successfully ([`Progress::succeeded`]); 0: not yet.
    ok_at_ms: AtomicI64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            events: AtomicU64::new(0),
            last_vsn: AtomicU64::new(0),
            lsn: AtomicU64::new(0),
            phase: Mutex::new("starting"),
            error: Mutex::new(None),
            started_at_ms: now_ms(),
            ok_at_ms: AtomicI64::new(0),
        }
    }
}

impl Progress {
    /// Sets the phase shown and reported. Reaching `snapshot`, `streaming` or `standby`
    /// means the run got through its preflight, topics and slot: it runs successfully
    /// ([`Progress::succeeded`]).
    pub fn set_phase(&self, phase: &'static str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
        if matches!(phase, "snapshot" | "streaming" | "standby") {
            self.succeeded();
        }
    }

    /// The exporter did its work successfully (see [`Progress::set_phase`], and every
    /// stored checkpoint): its last error is over.
    pub fn succeeded(&self) {
        if let Ok(mut e) = self.error.lock() {
            *e = None;
        }
        self.ok_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn phase(&self) -> &'static str {
        self.phase.lock().map(|p| *p).unwrap_or("unknown")
    }

    /// Records the error the run ended on: `failed` when it is definite or fatal (the
    /// last heartbeat then says so), `retrying` when the run starts again.
    pub fn record_error(&self, error: ServiceError) {
        self.set_phase(if error.is_transient() {
            "retrying"
        } else {
            "failed"
        });
        if let Ok(mut e) = self.error.lock() {
            *e = Some(error);
        }
    }

    fn error(&self) -> Option<ServiceError> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// Refreshes the table every second and sends a heartbeat every 10 s, when the phase
/// changes, and a last one when stopping, until `shutdown`.
pub async fn report(
    progress: Arc<Progress>,
    kafka: ClientConfig,
    status_topic: String,
    stream: Stream,
    mut shutdown: Shutdown,
) {
    let producer: Option<FutureProducer> = kafka.create().ok();
    let instance = instance_name();
    let terminal = std::io::stderr().is_terminal();
    let mut rates = RateWindow::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut drawn = false;
    let mut n = 0u64;
    let mut sent_phase = String::new();
    loop {
        let stopping = tokio::select! {
            biased;
            _ = shutdown.wait() => true,
            _ = tick.tick() => false,
        };
        let now = Instant::now();
        rates.record(now, progress.events.load(Ordering::Relaxed));
        let beat = ExporterHeartbeat {
            role: "exporter".into(),
            stream,
            instance: instance.clone(),
            phase: match progress.phase() {
                p @ ("failed" | "retrying") => p.into(),
                _ if stopping => "stopped".into(),
                p => p.into(),
            },
            lsn: Lsn(progress.lsn.load(Ordering::Relaxed)),
            last_vsn: Vsn(progress.last_vsn.load(Ordering::Relaxed)),
            events_this_run: progress.events.load(Ordering::Relaxed),
            rate_3m: rates.per_second(Duration::from_secs(180)),
            rate_10m: rates.per_second(Duration::from_secs(600)),
            at_ms: now_ms(),
            started_at_ms: progress.started_at_ms,
            error: progress.error(),
            ok_at_ms: progress.ok_at_ms.load(Ordering::Relaxed),
        };
        let lines = [
            format!("ferry-exporter  stream {}  phase {}", stream, beat.phase),
            format!(
                "  {:<28} {:>14}",
                "exported events (total)", beat.last_vsn.0
            ),
            format!(
                "  {:<28} {:>14}",
                "exported events (this run)", beat.events_this_run
            ),
            format!("  {:<28} {:>14.0}", "events/s, last 3 min", beat.rate_3m),
            format!("  {:<28} {:>14.0}", "events/s, last 10 min", beat.rate_10m),
            format!("  {:<28} {:>14}", "checkpointed LSN", beat.lsn.to_string()),
        ];
        if terminal {
            let mut err = std::io::stderr().lock();
            if drawn {
                let _ = write!(err, "\x1b[{}A", lines.len());
            }
            for l in &lines {
                let _ = writeln!(err, "\x1b[2K{l}");
            }
            drawn = true;
        } else if n % 30 == 0 || stopping {
            tracing::info!(
                phase = beat.phase,
                total = beat.last_vsn.0,
                this_run = beat.events_this_run,
                rate_3m = beat.rate_3m as u64,
                rate_10m = beat.rate_10m as u64,
                lsn = %beat.lsn,
                "export progress"
            );
        }
        // Every 10 s, and at once when the phase changes (status shows `streaming` or
        // `retrying` as soon as it is true, not up to 10 s later).
        if n % 10 == 0 || stopping || beat.phase != sent_phase {
            sent_phase = beat.phase.clone();
            if let (Some(p), Ok(json)) = (&producer, serde_json::to_vec(&beat)) {
                let key = heartbeat_key(stream);
                let _ = p
                    .send(
                        FutureRecord::to(&status_topic).key(&key).payload(&json),
                        Duration::from_secs(5),
                    )
                    .await;
            }
        }
        n += 1;
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_lasts_until_the_exporter_runs_successfully_again() {
        let p = Progress::default();
        p.record_error(ServiceError::transient("the broker is unreachable"));
        assert_eq!(p.phase(), "retrying");
        p.set_phase("starting");
        assert!(p.error().is_some(), "starting again is not success yet");
        p.set_phase("streaming");
        assert_eq!(p.error(), None);
        assert!(p.ok_at_ms.load(Ordering::Relaxed) > 0);
        p.record_error(ServiceError::definite(
            "table \"public.t\" has no primary key",
        ));
        assert_eq!(p.phase(), "failed");
    }
}
