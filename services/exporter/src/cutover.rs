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
//! How the end is found: on an ordinary session the exporter writes a non-transactional
//! logical message (`pg_logical_emit_message(false, 'ferry.stop', <slot>)`), whose LSN
//! the call returns, in a small transaction whose synchronous commit flushes the WAL
//! past it (decoding reads only flushed WAL). Logical decoding sends it when it reaches that point of the WAL,
//! after every transaction that committed before it and before any that commits after;
//! it never falls inside a decoded transaction. So when the change stream delivers the
//! message (prefix `ferry.stop`, content the slot name, LSN at least the returned one —
//! older messages of an interrupted stop are ignored), everything committed before the
//! request has been sent to the stamper. The exporter then records a checkpoint at the
//! message, ends the replication session, waits until Kafka acknowledged everything and
//! the checkpoint is stored, and only then writes the final record: end offsets of every
//! partition, the last VSN, the LSN and the sequences. The message may arrive before the
//! call returns, so the highest one seen is kept.
//!
//! Every step can be repeated: a restart while the directive is still `Stop` resumes
//! from the checkpoint, emits a new message and stops again; the final record is
//! written last, so once it exists the stop is complete. The slot and publication are
//! left in place: the coordinator drops them once the replication session is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_shared::catalog::{quote_ident, quote_literal};
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
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::progress::Progress;
use crate::Error;

/// The prefix of the logical message that marks the end of a stopped stream.
pub const STOP_PREFIX: &str = "ferry.stop";

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

/// Waits until the stream's directive is `Stop`, then writes the stop message and
/// publishes its LSN on `stop`. Pends forever when no stop comes.
pub async fn request_stop(
    client: &Client,
    slot: &str,
    stream: Stream,
    mut state: State,
    progress: &Progress,
    stop: watch::Sender<Option<Lsn>>,
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
    // The message is not transactional, but it is written inside a transaction that
    // takes an xid and commits synchronously: that commit flushes the WAL past the
    // message. A message alone is not flushed (before PostgreSQL 17's `flush`
    // argument), and logical decoding reads only flushed WAL, so on an idle database
    // the message could wait indefinitely.
    let messages = client
        .simple_query(&format!(
            "BEGIN; SET LOCAL synchronous_commit = on; \
             SELECT pg_logical_emit_message(false, {}, {})::text; \
             SELECT txid_current(); COMMIT",
            quote_literal(STOP_PREFIX),
            quote_literal(slot)
        ))
        .await
        .map_err(|e| Error::sql("writing the stop message to the WAL", e))?;
    let text = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default();
    let lsn: Lsn = text
        .parse()
        .map_err(|e| Error::Internal(format!("pg_logical_emit_message returned {text:?}: {e}")))?;
    tracing::info!(stream = %stream, lsn = %lsn, "cutover: waiting for the change stream to reach the stop message");
    stop.send_replace(Some(lsn));
    Ok(())
}

/// Every sequence in `schemas` with its exact state, read from the sequence itself.
pub async fn sequences(client: &Client, schemas: &[String]) -> Result<Vec<SequenceValue>, Error> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'S' AND n.nspname = ANY($1) ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .map_err(|e| Error::sql("listing sequences", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let value = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}.{}",
                    quote_ident(&schema),
                    quote_ident(&name)
                ),
                &[],
            )
            .await
            .map_err(|e| Error::sql(format!("reading sequence {schema}.{name}"), e))?;
        out.push(SequenceValue {
            schema,
            name,
            last_value: value.get(0),
            is_called: value.get(1),
        });
    }
    Ok(out)
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
) -> ExporterFinal {
    ExporterFinal {
        stream,
        lsn,
        last_vsn,
        end_offsets,
        sequences,
        written_at_ms: now_ms(),
    }
}
