//! Following the migration status record (MSR) and stopping a stream for a cutover
//! (DESIGN.md §6, steps 2 and 4).
//!
//! What the exporter of a stream does, by its directive (`msr.stream(stream)`):
//!
//! - a final record for the stream exists already: the stream was stopped for a cutover;
//!   the exporter returns at once and touches nothing (a restart after the stop);
//! - the migration ended (`ended_at_ms`): it returns, or stops like on a shutdown;
//! - `Standby`: it creates nothing (no slot, no publication, no topic) and waits;
//! - `Run`: it exports, its first VSN at least the directive's `first_vsn`;
//! - `Stop`: it exports every change committed before the request, then writes the
//!   stream's [`ExporterFinal`] and returns. A stop that arrives during the snapshot
//!   waits until the snapshot is read.
//!
//! How the end is found: the exporter asks its source to write a stop marker into the
//! change stream ([`crate::source::Source::write_stop`]: a row with a unique token in
//! `ferry_metadata.stop_markers`, see [`crate::postgres`]) after every transaction
//! committed before the request, and the change stream ends with the transaction that
//! carries that token. So when it ends, everything committed before the request has been sent to
//! the stamper. The exporter then records a checkpoint at the marker, ends the
//! replication session, waits until Kafka acknowledged everything and the checkpoint is
//! stored, and only then writes the final record: end offsets of every partition, the
//! last VSN, the LSN and the sequences.
//!
//! Every step can be repeated: a restart while the directive is still `Stop` resumes
//! from the checkpoint, writes a new marker and stops again; the final record is
//! written last, so once it exists the stop is complete. The slot and publication are
//! left in place: the coordinator drops them once the replication session is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_shared::kafka::{self, idempotent_producer_config};
use ferry_shared::position::{Lsn, Vsn};
use ferry_shared::shutdown::{Shutdown, ShutdownTrigger};
use ferry_shared::state::{
    final_key, now_ms, ExporterFinal, SequenceValue, StateView, StreamDirective, StreamPhase,
};
use ferry_shared::topics::Stream;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::watch;

use crate::progress::Progress;
use crate::source::Source;
use crate::Error;

/// The watched contents of `_state` (`None` until read up to its end).
pub type State = watch::Receiver<Option<StateView>>;

/// What the exporter does after reading the MSR at start.
#[derive(Debug)]
pub enum Start {
    /// Export under this directive.
    Run(StreamDirective),
    /// Return without touching the database.
    Return,
}

/// Waits for the first view of `_state` and, while the stream is on standby, for a
/// change of its directive; says whether to export.
pub async fn wait_to_run(
    stream: Stream,
    state: &mut State,
    shutdown: &mut Shutdown,
    progress: &Progress,
) -> Start {
    let mut standby_logged = false;
    loop {
        let view = {
            let current = state.borrow_and_update();
            current.clone()
        };
        if let Some(view) = view {
            if let Some(fin) = view.finals.get(&stream) {
                tracing::info!(
                    stream = %stream,
                    lsn = %fin.lsn,
                    last_vsn = %fin.last_vsn,
                    "the {stream} stream was stopped for a cutover already; nothing to do"
                );
                return Start::Return;
            }
            if view.msr.ended_at_ms.is_some() {
                tracing::info!(stream = %stream, "the migration was ended; nothing to do");
                return Start::Return;
            }
            let directive = view.msr.stream(stream).clone();
            if directive.phase != StreamPhase::Standby {
                return Start::Run(directive);
            }
            if !standby_logged {
                tracing::info!(
                    stream = %stream,
                    "the {stream} stream is on standby; waiting for the coordinator to start it"
                );
                progress.set_phase("standby");
                standby_logged = true;
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.wait() => return Start::Return,
            changed = state.changed() => {
                if changed.is_err() {
                    // The watcher ends only on shutdown.
                    return Start::Return;
                }
            }
        }
    }
}

/// Triggers `inner` when `outer` fires or the migration is ended in the MSR: an ended
/// migration stops the exporter like a shutdown.
pub async fn follow_end(mut state: State, mut outer: Shutdown, inner: ShutdownTrigger) {
    let ended = tokio::select! {
        biased;
        _ = outer.wait() => false,
        ended = state.wait_for(|v| v.as_ref().is_some_and(|v| v.msr.ended_at_ms.is_some())) => ended.is_ok(),
    };
    if ended {
        tracing::info!("the migration was ended; stopping");
    } else {
        outer.wait().await;
    }
    inner.trigger();
}

/// Waits until the stream's directive is `Stop`, then writes the stop marker and
/// publishes its position on `stop`. Pends forever when no stop comes.
pub(crate) async fn request_stop<S: Source>(
    source: &S,
    stream: Stream,
    mut state: State,
    progress: &Progress,
    stop: watch::Sender<Option<String>>,
) -> Result<(), Error> {
    let requested = state
        .wait_for(|v| {
            v.as_ref()
                .is_some_and(|v| v.msr.stream(stream).phase == StreamPhase::Stop)
        })
        .await
        .is_ok();
    if !requested {
        return std::future::pending().await;
    }
    tracing::info!(
        stream = %stream,
        "cutover: stop requested; exporting every change committed up to now"
    );
    progress.set_phase("stopping");
    let token = source.write_stop().await?;
    tracing::info!(stream = %stream, token = %token, "cutover: waiting for the change stream to reach the stop marker");
    stop.send_replace(Some(token));
    Ok(())
}

/// The end offset (high watermark) of every partition of every topic.
pub async fn end_offsets(
    kafka_config: &ClientConfig,
    topics: &[String],
) -> Result<BTreeMap<String, Vec<i64>>, Error> {
    let mut out = BTreeMap::new();
    for topic in topics {
        let marks = kafka::watermarks(kafka_config, topic).await?;
        out.insert(
            topic.clone(),
            marks.into_iter().map(|(_, high)| high).collect(),
        );
    }
    Ok(out)
}

/// Stores the final record in `_state` and waits for Kafka's acknowledgement.
pub async fn write_final(
    kafka_config: &ClientConfig,
    state_topic: &str,
    fin: &ExporterFinal,
) -> Result<(), Error> {
    let producer: FutureProducer = idempotent_producer_config(kafka_config)
        .set("linger.ms", "0")
        .create()
        .map_err(|e| kafka::Error {
            what: "creating a producer for the final record".into(),
            source: Some(e),
        })?;
    let payload = serde_json::to_vec(fin)
        .map_err(|e| Error::Internal(format!("encoding the final record: {e}")))?;
    let key = final_key(fin.stream);
    producer
        .send(
            FutureRecord::to(state_topic).key(&key).payload(&payload),
            Duration::from_secs(60),
        )
        .await
        .map_err(|(e, _)| kafka::Error {
            what: format!("storing {key} in {state_topic}"),
            source: Some(e),
        })?;
    Ok(())
}

/// Builds the final record of a stream stopped at `lsn`.
pub fn final_record(
    stream: Stream,
    lsn: Lsn,
    last_vsn: Vsn,
    end_offsets: BTreeMap<String, Vec<i64>>,
    sequences: Vec<SequenceValue>,
    after_stop_events: u64,
) -> ExporterFinal {
    ExporterFinal {
        stream,
        lsn,
        last_vsn,
        end_offsets,
        sequences,
        after_stop_events,
        written_at_ms: now_ms(),
    }
}
