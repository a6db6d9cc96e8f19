//! The phases of one export, for any [`Source`]: the snapshot, the changes after it,
//! and the stop for a cutover.
//!
//! - Snapshot chunks get VSNs above every VSN already in the topics (and at or above
//!   the directive's first VSN); replayed changes get the checkpoint's VSNs, so each
//!   change keeps its VSN across restarts.
//! - A new position is created with an exported snapshot, which is read before the
//!   change stream starts at that position: no gap, no overlap. An existing position is
//!   never recreated: unfinished snapshot chunks are read from a newer snapshot and the
//!   stream from the position covers the difference.
//! - No change is stamped before the checkpoint saying the snapshot is complete is
//!   stored (see [`Ctx::with_changes`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferry_shared::checkpoint::{ExporterCheckpoint, SnapshotProgress, TableProgress};
use ferry_shared::config::{Config, ExportType};
use ferry_shared::position::{Lsn, Vsn};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::state::StreamPhase;
use ferry_shared::topics::Stream;
use tokio::sync::watch;

use crate::sequencer::{Item, Pipeline, PipelineConfig};
use crate::source::{Changes, Opened, Readers, SnapshotView, Source, Stopped, Work};
use crate::{cutover, lead, progress, Error};
use ferry_shared::clock::now_ms;
use ferry_shared::codec::TableEncoder;

/// One export of one stream from `source`.
pub(crate) struct Ctx<'a, S> {
    pub config: &'a Config,
    pub source: &'a S,
    /// The slot name, stored in checkpoints.
    pub slot: &'a str,
    pub encoders: &'a [Arc<TableEncoder>],
    pub topic_names: Vec<String>,
    pub state_topic: String,
    pub stream: Stream,
    pub shutdown: Shutdown,
    pub progress: Arc<progress::Progress>,
    /// The watched `_state` (the MSR).
    pub state: cutover::State,
    /// The highest VSN in the stream's topics at start.
    pub topics_max: u64,
}

impl<S: Source> Ctx<'_, S> {
    fn pipeline(&self, start: ExporterCheckpoint) -> Result<Pipeline, Error> {
        Ok(Pipeline::start(PipelineConfig {
            kafka: self.config.kafka.client_config(),
            topics: self.topic_names.clone(),
            tables: self.encoders.iter().map(|e| e.name.clone()).collect(),
            state_topic: self.state_topic.clone(),
            stream: self.stream,
            start,
            progress: self.progress.clone(),
        })?)
    }

    /// Plans the tables that have no plan yet and lists the chunks not done.
    async fn plan(&self, progress: &mut SnapshotProgress) -> Result<Vec<Work>, Error> {
        let mut work = Vec::new();
        for enc in self.encoders {
            if !progress.tables.contains_key(&enc.name) {
                let chunks = self
                    .source
                    .plan(&enc.table, self.config.exporter.chunk_rows)
                    .await?;
                let done = vec![false; chunks.len()];
                progress
                    .tables
                    .insert(enc.name.clone(), TableProgress { chunks, done });
            }
            if let Some(t) = progress.tables.get(&enc.name) {
                for (index, (chunk, done)) in t.chunks.iter().zip(&t.done).enumerate() {
                    if !done {
                        work.push(Work {
                            table: enc.clone(),
                            index,
                            chunk: *chunk,
                        });
                    }
                }
            }
        }
        Ok(work)
    }

    async fn read_snapshot(
        &self,
        pipeline: &Pipeline,
        snapshot: &S::Snapshot,
        work: Vec<Work>,
    ) -> Result<bool, Error> {
        let chunks = work.len();
        self.progress.set_phase("snapshot");
        tracing::info!(chunks, snapshot = snapshot.name(), lsn = %snapshot.position(), "reading the snapshot");
        let lead = lead::monitor(self.config, &self.topic_names, &self.progress);
        let read = self
            .source
            .read_snapshot(
                snapshot,
                work,
                Readers {
                    workers: self.config.exporter.snapshot_workers as usize,
                    items: pipeline.items.clone(),
                    shutdown: self.shutdown.clone(),
                    lead: lead.as_ref().map(|(rx, _)| rx.clone()),
                },
            )
            .await;
        if let Some((_, task)) = lead {
            task.abort();
        }
        read?;
        if self.shutdown.is_triggered() {
            return Ok(false);
        }
        pipeline
            .items
            .send(vec![Item::SnapshotDone])
            .await
            .map_err(|_| Error::Internal("the stamper stopped".into()))?;
        tracing::info!(chunks, "snapshot read");
        Ok(true)
    }

    pub(crate) async fn snapshot_only(
        &self,
        checkpoint: Option<ExporterCheckpoint>,
        max_vsn: u64,
    ) -> Result<(), Error> {
        let mut start = checkpoint.unwrap_or_else(|| new_checkpoint(self.slot, Lsn::ZERO, max_vsn));
        if start.snapshot.done {
            if self.stop_requested() {
                // A snapshot has no changes to wait for: the final record is all a
                // cutover needs (its LSN is the checkpoint's, 0/0 without a stream).
                let at = start.lsn;
                return self
                    .stopped(
                        Stopped {
                            at,
                            after_marker: 0,
                        },
                        Some(start),
                    )
                    .await;
            }
            tracing::info!("the snapshot is complete already; nothing to do");
            return Ok(());
        }
        start.next_vsn = Vsn(max_vsn.max(start.next_vsn.0.saturating_sub(1)) + 1);
        let snapshot = self.source.snapshot().await?;
        let lsn = snapshot.position();
        let work = self.plan(&mut start.snapshot).await?;
        let pipeline = self.pipeline(start)?;
        let read = self.read_snapshot(&pipeline, &snapshot, work).await;
        let finished = pipeline.finish().await;
        let complete = read?;
        let last = finished?;
        if complete && self.stop_requested() {
            let stopped = Stopped {
                at: lsn,
                after_marker: 0,
            };
            return self.stopped(stopped, last).await;
        }
        Ok(())
    }

    /// True when the MSR says this stream must stop.
    fn stop_requested(&self) -> bool {
        self.state
            .borrow()
            .as_ref()
            .is_some_and(|v| v.msr.stream(self.stream).phase == StreamPhase::Stop)
    }

    pub(crate) async fn with_changes(
        &self,
        checkpoint: Option<ExporterCheckpoint>,
        max_vsn: u64,
        export_type: ExportType,
    ) -> Result<(), Error> {
        let export = export_type == ExportType::SnapshotAndChanges;
        let opened = self
            .source
            .open_changes(checkpoint.as_ref(), self.encoders, export)
            .await?;
        let new_position = matches!(opened, Opened::Created { .. });
        let (mut changes, mut start, snapshot) = match (opened, checkpoint) {
            (
                Opened::Created {
                    at,
                    snapshot,
                    changes,
                },
                _,
            ) => {
                let mut cp = new_checkpoint(self.slot, at, max_vsn);
                cp.snapshot.done = !export;
                (changes, cp, snapshot)
            }
            (Opened::Existing { .. }, Some(cp)) if cp.snapshot.done => {
                // Replay from the checkpoint with its VSNs.
                (self.source.resume_changes(cp.lsn).await?, cp, None)
            }
            (Opened::Existing { confirmed }, cp) => {
                // The position exists and the snapshot is not complete: redo what is
                // missing from a newer snapshot, with VSNs above everything in the
                // topics; the stream (from the position) covers the difference.
                let mut cp = cp.unwrap_or_else(|| new_checkpoint(self.slot, confirmed, max_vsn));
                cp.next_vsn = Vsn(max_vsn.max(cp.next_vsn.0.saturating_sub(1)) + 1);
                let mut snapshot = None;
                if export_type == ExportType::ChangesOnly {
                    cp.snapshot.done = true;
                } else {
                    snapshot = Some(self.source.snapshot().await?);
                }
                (self.source.resume_changes(cp.lsn).await?, cp, snapshot)
            }
        };
        let work = match &snapshot {
            Some(_) => self.plan(&mut start.snapshot).await?,
            None => Vec::new(),
        };
        let pipeline = self.pipeline(start.clone())?;
        if new_position && snapshot.is_none() {
            // A new position without a snapshot: store its start at once, so that a
            // restart replays from there with the same VSNs.
            pipeline
                .items
                .send(vec![Item::Commit { end_lsn: start.lsn }])
                .await
                .map_err(|_| Error::Internal("the stamper stopped".into()))?;
        }
        if let Some(snapshot) = &snapshot {
            let read = self.read_snapshot(&pipeline, snapshot, work).await;
            match read {
                Ok(true) => {
                    // No change may be stamped before the checkpoint saying the
                    // snapshot is complete is stored: otherwise a crash in between
                    // would redo snapshot chunks and then stamp the same changes
                    // again with other VSNs.
                    let mut written = pipeline.written.clone();
                    let mut shutdown = self.shutdown.clone();
                    let stored = tokio::select! {
                        biased;
                        _ = shutdown.wait() => false,
                        r = written.wait_for(|w| w.as_ref().is_some_and(|c| c.snapshot.done)) => r.is_ok(),
                    };
                    if !stored {
                        pipeline.finish().await?;
                        return Ok(());
                    }
                }
                Ok(false) => {
                    pipeline.finish().await?;
                    return Ok(());
                }
                Err(e) => {
                    let finished = pipeline.finish().await;
                    finished?;
                    return Err(e);
                }
            }
        }
        drop(snapshot);

        changes.start().await?;
        if let Err(e) = changes.started().await {
            let _ = pipeline.finish().await;
            return Err(e);
        }
        tracing::info!(slot = self.slot, lsn = %start.lsn, next_vsn = %start.next_vsn, "streaming changes");
        self.progress.set_phase("streaming");
        let by_name: HashMap<(String, String), Arc<TableEncoder>> = self
            .encoders
            .iter()
            .map(|e| ((e.table.schema.clone(), e.table.name.clone()), e.clone()))
            .collect();
        let (stop_tx, stop_rx) = watch::channel(None);
        let streamed = changes.run(
            &by_name,
            pipeline.items.clone(),
            pipeline.durable.clone(),
            stop_rx,
            self.shutdown.clone(),
        );
        let request = cutover::request_stop(
            self.source,
            self.stream,
            self.state.clone(),
            &self.progress,
            stop_tx,
        );
        tokio::pin!(streamed, request);
        let mut requested = false;
        let streamed = loop {
            tokio::select! {
                r = &mut streamed => break r,
                r = &mut request, if !requested => {
                    requested = true;
                    if let Err(e) = r {
                        break Err(e);
                    }
                }
            }
        };
        let finished = pipeline.finish().await;
        match (streamed, finished) {
            (Err(Error::Internal(_)), Err(e)) => Err(e.into()),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
            (Ok(None), Ok(_)) => Ok(()),
            (Ok(Some(stopped)), Ok(last)) => self.stopped(stopped, last).await,
        }
    }

    /// The stream was exported up to `lsn` and everything is acknowledged and
    /// checkpointed (`last`): writes the final record.
    async fn stopped(
        &self,
        stopped: Stopped,
        last: Option<ExporterCheckpoint>,
    ) -> Result<(), Error> {
        let lsn = stopped.at;
        let kafka_config = self.config.kafka.client_config();
        let stamped = last.map_or(0, |cp| cp.next_vsn.0.saturating_sub(1));
        let last_vsn = Vsn(stamped.max(self.topics_max));
        let end_offsets = cutover::end_offsets(&kafka_config, &self.topic_names).await?;
        let sequences = self.source.sequences().await?;
        let fin = cutover::final_record(
            self.stream,
            lsn,
            last_vsn,
            end_offsets,
            sequences,
            stopped.after_marker,
        );
        cutover::write_final(&kafka_config, &self.state_topic, &fin).await?;
        self.progress.set_phase("stopped");
        tracing::info!(
            stream = %self.stream,
            lsn = %lsn,
            last_vsn = %last_vsn,
            events_this_run = self.progress.events.load(std::sync::atomic::Ordering::Relaxed),
            sequences = fin.sequences.len(),
            after_marker = stopped.after_marker,
            "the {} stream stopped for the cutover: every change up to {lsn} is in kafka (last VSN {last_vsn}); final record written",
            self.stream
        );
        Ok(())
    }
}

fn new_checkpoint(slot: &str, lsn: Lsn, max_vsn: u64) -> ExporterCheckpoint {
    ExporterCheckpoint {
        slot: slot.to_owned(),
        lsn,
        next_vsn: Vsn(max_vsn + 1),
        snapshot: SnapshotProgress {
            done: false,
            tables: BTreeMap::new(),
        },
        counts: BTreeMap::new(),
        written_at_ms: now_ms(),
    }
}
