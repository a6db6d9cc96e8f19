//! How far the snapshot may run ahead of the importers (`exporter.snapshot_max_lead`):
//! a monitor measures, every 500 ms, what the importer groups of every destination
//! committed on the stream's topics, and snapshot readers wait before each chunk while
//! the slowest one is more than the limit behind. Engine-independent: it reads Kafka
//! only.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_shared::config::Config;
use ferry_shared::kafka::{self, LagProbe};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::{Destination, Topics};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::progress::Progress;

/// What the snapshot readers need to know how far the slowest importer is behind.
#[derive(Clone, Debug)]
pub(crate) struct Lead {
    /// `exporter.snapshot_max_lead`.
    pub max: u64,
    /// False until the first measurement (readers wait for it).
    pub measured: bool,
    /// Records in the stream's topics when the snapshot started...
    pub ends: u64,
    /// ... when this exporter had stamped this many events (`Progress::events`): the
    /// topics now hold `ends + events - events_before`.
    pub events_before: u64,
    /// The importer group that committed least, and the sum of its committed offsets
    /// (`None`: no importer group has committed on the stream's topics).
    pub slowest: Option<(String, u64)>,
    /// The exporter's counters (events stamped so far).
    pub progress: Arc<Progress>,
}

impl Lead {
    /// How many records the slowest importer is behind, counting what this exporter
    /// stamped up to now (the commits are at most one measurement old).
    fn behind(&self) -> Option<(&str, u64)> {
        let (group, committed) = self.slowest.as_ref()?;
        let events = self.progress.events.load(Ordering::Relaxed);
        let end = self.ends + events.saturating_sub(self.events_before);
        Some((group.as_str(), end.saturating_sub(*committed)))
    }

    fn too_far(&self) -> bool {
        !self.measured || self.behind().is_some_and(|(_, n)| n > self.max)
    }
}

/// Waits while an importer is more than `max` records behind (the first wait is
/// logged, naming the group).
pub(crate) async fn wait_for_importers(lead: &mut watch::Receiver<Lead>, shutdown: &mut Shutdown) {
    let mut logged = false;
    loop {
        let l = lead.borrow_and_update().clone();
        if !l.too_far() {
            if logged {
                tracing::debug!("the importers caught up; the snapshot goes on");
                l.progress.set_phase("snapshot");
            }
            return;
        }
        if !logged && l.measured {
            l.progress.set_phase("snapshot (waiting for an importer)");
            if let Some((group, n)) = l.behind() {
                tracing::debug!(group = %group, behind = n, max = l.max, "the snapshot waits: an importer is more than exporter.snapshot_max_lead records behind");
            }
            logged = true;
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            changed = lead.changed() => if changed.is_err() { return },
        }
    }
}

/// With `exporter.snapshot_max_lead` set: a task reading, every 500 ms, what the
/// importer groups of every destination committed on `topic_names` (the stream's
/// topics). Readers wait on it before each chunk ([`Lead`]).
pub(crate) fn monitor(
    config: &Config,
    topic_names: &[String],
    progress: &Arc<Progress>,
) -> Option<(watch::Receiver<Lead>, JoinHandle<()>)> {
    let max = config.exporter.snapshot_max_lead;
    if max == 0 {
        return None;
    }
    let topics = Topics::new(config.migration.topic_prefix());
    let groups: Vec<String> = [
        Destination::Target,
        Destination::SourceReplica,
        Destination::Source,
    ]
    .into_iter()
    .map(|d| topics.import_group(d))
    .collect();
    let kafka = config.kafka.client_config();
    let names = topic_names.to_vec();
    let progress = progress.clone();
    let events_before = progress.events.load(Ordering::Relaxed);
    let (tx, rx) = watch::channel(Lead {
        max,
        measured: false,
        ends: 0,
        events_before,
        slowest: None,
        progress,
    });
    let task = tokio::spawn(async move {
        // What the topics hold: their ends when the snapshot starts (readers wait
        // for this first measurement, so nothing is produced meanwhile) plus what
        // this exporter stamped since, which it counts itself (a broker's end
        // offsets may lag).
        let mut ends = 0u64;
        for topic in &names {
            match kafka::watermarks(&kafka, topic).await {
                Ok(w) => {
                    ends += w
                        .iter()
                        .map(|(_, h)| u64::try_from(*h).unwrap_or(0))
                        .sum::<u64>()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot measure the importers' lag; the snapshot does not wait for them");
                    return;
                }
            }
        }
        let probe =
            tokio::task::spawn_blocking(move || LagProbe::new(&kafka, &groups, &names)).await;
        let probe = match probe {
            Ok(Ok(probe)) => Arc::new(probe),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot measure the importers' lag; the snapshot does not wait for them");
                return;
            }
            Err(_) => return,
        };
        loop {
            let p = probe.clone();
            match tokio::task::spawn_blocking(move || p.committed()).await {
                Ok(Ok(groups)) => {
                    let slowest = groups
                        .into_iter()
                        .filter_map(|(g, c)| c.map(|c| (g, c)))
                        .min_by_key(|(_, c)| *c);
                    tx.send_modify(|l| {
                        l.measured = true;
                        l.ends = ends;
                        l.slowest = slowest;
                    });
                    if tx.is_closed() {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "measuring the importers' lag");
                }
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Some((rx, task))
}
