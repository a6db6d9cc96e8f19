//! The change stream: pgoutput from the replication slot to events.
//!
//! - Changes arrive whole transactions at a time, in commit order; every event of a
//!   transaction is sent to the stamper before the transaction's [`Item::Commit`], whose
//!   end LSN is where a restarted stream resumes.
//! - The slot's flush position is raised only to the LSN of a stored checkpoint
//!   ([`crate::sequencer::Pipeline::durable`]); the replication client sends standby
//!   status updates on a timer, also when idle.
//! - With REPLICA IDENTITY FULL the old row comes whole, so unchanged TOAST values
//!   (`u`) in the new row are taken from it. An update that changes the primary key is a
//!   delete of the old key and a create of the new one, so that every key's events stay
//!   in that key's partition.
//! - TRUNCATE and a Relation message that no longer matches the table stop the stream
//!   with an error naming the table: Ferry never skips data silently.
//! - A stop for a cutover ends the stream after the transaction that inserted the
//!   requested stop marker into `ferry_metadata.stop_markers` ([`super::write_stop`],
//!   [`crate::cutover`]): transactions arrive in commit order, so every transaction
//!   committed before the marker has been sent then. Marker rows are never exported.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_shared::envelope::Op;
use ferry_shared::position::Lsn;
use ferry_shared::shutdown::Shutdown;
use ferry_shared::value::{parse_text, Datum};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};

use super::pgoutput::{self, Message, OldTuple, Relation, Tuple, TupleValue};
use crate::sequencer::Item;
use crate::source::{Changes, Stopped};
use crate::Error;
use ferry_shared::codec::{SourceTemplate, TableEncoder};

/// Events per batch inside a large transaction.
const BATCH: usize = 2000;

/// How long the stream reads on after its stop marker, counting (not sending) the
/// changes committed after it, unless it catches up with the database sooner.
const AFTER_STOP_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// After the stop marker, the stream has caught up once no transaction arrived for
/// this long.
const AFTER_STOP_IDLE: std::time::Duration = std::time::Duration::from_millis(250);

/// The change stream of a replication slot: a replication session opened at a position
/// and gated (nothing streams, and a snapshot exported on the session stays usable,
/// until [`Changes::start`]).
pub(crate) struct PgChanges {
    client: ReplicationClient,
    slot: String,
    publication: String,
}

impl PgChanges {
    pub(crate) fn new(client: ReplicationClient, slot: &str, publication: &str) -> Self {
        PgChanges {
            client,
            slot: slot.to_owned(),
            publication: publication.to_owned(),
        }
    }
}

impl Changes for PgChanges {
    async fn start(&mut self) -> Result<(), Error> {
        self.client
            .start()
            .await
            .map(|_| ())
            .map_err(|source| Error::Replication {
                what: "starting replication".into(),
                source,
            })
    }

    async fn started(&mut self) -> Result<(), Error> {
        self.client
            .wait_started()
            .await
            .map(|_| ())
            .map_err(|e| replication_error(e, &self.slot, &self.publication))
    }

    async fn run(
        self,
        tables: &HashMap<(String, String), Arc<TableEncoder>>,
        items: mpsc::Sender<Vec<Item>>,
        durable: watch::Receiver<Lsn>,
        stop: watch::Receiver<Option<String>>,
        shutdown: Shutdown,
    ) -> Result<Option<Stopped>, Error> {
        run(
            self.client,
            tables,
            &self.slot,
            &self.publication,
            items,
            durable,
            stop,
            shutdown,
        )
        .await
    }
}

/// Streams changes until shutdown, an error, or the stop marker whose token is
/// published on `stop`. Then it sends a commit at the end of the marker's transaction
/// (every change committed before the marker was sent before it), reads on until no
/// transaction came for [`AFTER_STOP_IDLE`] ([`AFTER_STOP_WINDOW`] at most), counting
/// the changes committed after the marker without sending them, and returns
/// [`Stopped`].
#[allow(clippy::too_many_arguments)]
async fn run(
    mut client: ReplicationClient,
    tables: &HashMap<(String, String), Arc<TableEncoder>>,
    slot: &str,
    publication: &str,
    items: mpsc::Sender<Vec<Item>>,
    mut durable: watch::Receiver<Lsn>,
    mut stop: watch::Receiver<Option<String>>,
    mut shutdown: Shutdown,
) -> Result<Option<Stopped>, Error> {
    let mut relations: HashMap<u32, Option<Arc<TableEncoder>>> = HashMap::new();
    let mut batch: Vec<Item> = Vec::new();
    let mut tx: Option<Tx> = None;
    let mut last_end = *durable.borrow();
    // False once the durable position's sender is gone (the checkpoint writer ended).
    let mut durable_open = true;
    // The requested stop marker's token, and every marker seen so far with the end of
    // its transaction (a marker may arrive before its token is published).
    let mut stop_at: Option<String> = stop.borrow_and_update().clone();
    let mut stop_open = true;
    let mut markers = Markers::default();
    let mut stopped: Option<Stopped> = None;
    // After the stop: until when the stream reads on, and the events of the open
    // transaction (counted at its commit, never sent).
    let mut after_until: Option<tokio::time::Instant> = None;
    let mut idle_until = tokio::time::Instant::now();
    let mut after_batch: Vec<Item> = Vec::new();
    loop {
        if stopped.is_none() {
            if let Some(seen) = stop_at.as_ref().and_then(|t| markers.seen.get(t)).copied() {
                if tx.is_none() {
                    // Committed transactions still gathered go first.
                    if !batch.is_empty() && items.send(std::mem::take(&mut batch)).await.is_err() {
                        return Err(Error::Internal("the stamper stopped".into()));
                    }
                    let end = last_end.max(seen);
                    if items
                        .send(vec![Item::Commit { end_lsn: end }])
                        .await
                        .is_err()
                    {
                        return Err(Error::Internal("the stamper stopped".into()));
                    }
                    stopped = Some(Stopped {
                        at: end,
                        after_marker: 0,
                    });
                    after_until = Some(tokio::time::Instant::now() + AFTER_STOP_WINDOW);
                    idle_until = tokio::time::Instant::now() + AFTER_STOP_IDLE;
                }
            }
        }
        let reading_after = after_until.is_some();
        // Cheap checks first (a version compare each), so that an event already
        // waiting is taken without polling, and re-registering, every other branch:
        // at tens of thousands of one-row transactions a second that polling was a
        // large share of the stream's CPU.
        if shutdown.is_triggered() {
            break;
        }
        // After the stop, the window ends even while events keep coming (the select
        // below takes a waiting event first).
        if after_until.is_some_and(|until| tokio::time::Instant::now() >= until.min(idle_until)) {
            break;
        }
        if stop_open && stop_at.is_none() {
            match stop.has_changed() {
                Ok(true) => {
                    stop_at = stop.borrow_and_update().clone();
                    continue;
                }
                Ok(false) => {}
                Err(_) => {
                    // The sender is gone, perhaps right after publishing the token:
                    // its last value still counts.
                    stop_open = false;
                    stop_at = stop.borrow_and_update().clone();
                    continue;
                }
            }
        }
        if durable.has_changed().unwrap_or(false) {
            let lsn = *durable.borrow_and_update();
            client.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
        }
        let event = tokio::select! {
            biased;
            ev = client.recv() => ev,
            // Nothing more waiting: the committed transactions gathered so far go to
            // the stamper now (one hand-off for many small transactions under load,
            // no wait for a trickle).
            _ = std::future::ready(()), if !batch.is_empty() && tx.is_none() => {
                if items.send(std::mem::take(&mut batch)).await.is_err() {
                    return Err(Error::Internal("the stamper stopped".into()));
                }
                continue;
            }
            _ = shutdown.wait() => break,
            _ = async {
                match after_until {
                    Some(until) => tokio::time::sleep_until(until.min(idle_until)).await,
                    None => std::future::pending().await,
                }
            }, if reading_after => break,
            changed = stop.changed(), if stop_open && stop_at.is_none() => {
                match changed {
                    Ok(()) => stop_at = stop.borrow_and_update().clone(),
                    Err(_) => stop_open = false,
                }
                continue;
            }
            // A closed channel answers at once, every time: the branch is then left
            // off, or the loop would spin.
            changed = durable.changed(), if durable_open => {
                match changed {
                    Ok(()) => {
                        let lsn = *durable.borrow_and_update();
                        client.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
                    }
                    Err(_) => durable_open = false,
                }
                continue;
            }
        };
        let event = match event {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => return Err(replication_error(e, slot, publication)),
        };
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                tx = Some(Tx {
                    lsn: Lsn(final_lsn.0).to_string(),
                    xid: i64::from(xid),
                    commit_ms: pgoutput::pg_time_to_unix_ms(commit_time_micros),
                    tails: Vec::new(),
                });
            }
            ReplicationEvent::Commit { end_lsn, .. } if reading_after => {
                // After the stop: counted, not sent.
                last_end = Lsn(end_lsn.0);
                tx = None;
                markers.committed(last_end);
                let events = after_batch
                    .drain(..)
                    .filter(|i| matches!(i, Item::Event(_)))
                    .count() as u64;
                if let Some(s) = stopped.as_mut() {
                    s.after_marker += events;
                }
                idle_until = tokio::time::Instant::now() + AFTER_STOP_IDLE;
                continue;
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                last_end = Lsn(end_lsn.0);
                batch.push(Item::Commit { end_lsn: last_end });
                tx = None;
                markers.committed(last_end);
                // Sent once nothing more is waiting (above), or once the batch is full.
                if batch.len() >= BATCH && items.send(std::mem::take(&mut batch)).await.is_err() {
                    return Err(Error::Internal("the stamper stopped".into()));
                }
            }
            ReplicationEvent::XLogData { data, .. } => {
                let message = pgoutput::decode(data).map_err(Error::Decode)?;
                if !markers.take(&message)? {
                    let into = if reading_after {
                        &mut after_batch
                    } else {
                        &mut batch
                    };
                    handle(message, tables, &mut relations, tx.as_mut(), into)?;
                }
                if batch.len() >= BATCH && items.send(std::mem::take(&mut batch)).await.is_err() {
                    return Err(Error::Internal("the stamper stopped".into()));
                }
            }
            // After the stop, the timer above ends the reading: at the end of the
            // window, or once no transaction came for a while.
            ReplicationEvent::KeepAlive { .. } if reading_after => {}
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Between transactions, everything the server decoded up to `wal_end`
                // was sent before this keepalive: the position may advance past WAL of
                // tables outside the publication, so the slot does not hold WAL forever
                // on a source whose selected tables are idle.
                let wal_end = Lsn(wal_end.0);
                if tx.is_none() && batch.is_empty() && wal_end > last_end {
                    last_end = wal_end;
                    if items
                        .send(vec![Item::Commit { end_lsn: wal_end }])
                        .await
                        .is_err()
                    {
                        return Err(Error::Internal("the stamper stopped".into()));
                    }
                }
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
    }
    // Events of an unfinished transaction are dropped: the stream resumes at its start.
    client.stop();
    let _ = client.shutdown().await;
    Ok(stopped)
}

/// The stop markers of the stream (`ferry_metadata.stop_markers`, see the module doc).
#[derive(Default)]
struct Markers {
    /// The marker table's relation id, once its Relation message arrived.
    relid: Option<u32>,
    /// Tokens inserted by the open transaction.
    in_tx: Vec<String>,
    /// Every token seen, with the end of its transaction.
    seen: HashMap<String, Lsn>,
}

impl Markers {
    /// Takes `message` if it concerns the marker table (its Relation, a marker row);
    /// true when taken (it is not exported).
    fn take(&mut self, message: &Message) -> Result<bool, Error> {
        let (schema, table) = ferry_shared::metadata::STOP_MARKERS;
        match message {
            Message::Relation(rel) if rel.namespace == schema && rel.name == table => {
                self.relid = Some(rel.relid);
                Ok(true)
            }
            Message::Insert { relid, new } if Some(*relid) == self.relid => {
                match new.0.first() {
                    Some(TupleValue::Text(token)) => {
                        let token = String::from_utf8_lossy(token).into_owned();
                        tracing::debug!(token = %token, "stop marker received");
                        self.in_tx.push(token);
                    }
                    _ => {
                        return Err(Error::Internal(
                            "a stop marker without a token arrived".into(),
                        ))
                    }
                }
                Ok(true)
            }
            // Nothing else is done to markers; if something is, it is not data.
            Message::Update { relid, .. } | Message::Delete { relid, .. }
                if Some(*relid) == self.relid =>
            {
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The open transaction committed, ending at `end`.
    fn committed(&mut self, end: Lsn) {
        for token in self.in_tx.drain(..) {
            self.seen.insert(token, end);
        }
    }
}

fn replication_error(e: PgWireError, slot: &str, publication: &str) -> Error {
    let text = e.to_string();
    if text.contains("replication slot") && text.contains("does not exist") {
        Error::SlotDropped {
            slot: slot.to_owned(),
        }
    } else if text.contains("publication") && text.contains("does not exist") {
        Error::PublicationDropped {
            publication: publication.to_owned(),
        }
    } else {
        Error::Replication {
            what: "streaming changes from the replication slot".into(),
            source: e,
        }
    }
}

/// The open transaction: its `source` fields, and the encoded `source` of each table
/// it changed (the same for all of that table's events in it).
struct Tx {
    /// Commit LSN, as text.
    lsn: String,
    xid: i64,
    commit_ms: i64,
    /// Encoder address and encoded `source` of each table changed so far (a short list:
    /// most transactions change one table or a few).
    tails: Vec<(usize, Arc<[u8]>)>,
}

impl Tx {
    fn tail(&mut self, enc: &Arc<TableEncoder>) -> Result<Arc<[u8]>, Error> {
        let id = Arc::as_ptr(enc) as usize;
        if let Some((_, tail)) = self.tails.iter().find(|(at, _)| *at == id) {
            return Ok(tail.clone());
        }
        let tail = enc
            .source_tail(
                false,
                SourceTemplate {
                    lsn: &self.lsn,
                    txid: Some(self.xid),
                    commit_ts_ms: self.commit_ms,
                },
            )
            .map_err(|e| Error::Encode {
                table: enc.name.clone(),
                source: e,
            })?;
        self.tails.push((id, tail.clone()));
        Ok(tail)
    }
}

fn handle(
    message: Message,
    tables: &HashMap<(String, String), Arc<TableEncoder>>,
    relations: &mut HashMap<u32, Option<Arc<TableEncoder>>>,
    mut tx: Option<&mut Tx>,
    batch: &mut Vec<Item>,
) -> Result<(), Error> {
    let mut tail_of = |enc: &Arc<TableEncoder>| -> Result<Arc<[u8]>, Error> {
        match tx.as_deref_mut() {
            Some(tx) => tx.tail(enc),
            None => Err(Error::Internal(
                "a change arrived outside a transaction".into(),
            )),
        }
    };
    match message {
        Message::Relation(rel) => {
            let enc = tables
                .get(&(rel.namespace.clone(), rel.name.clone()))
                .cloned();
            if let Some(enc) = &enc {
                check_relation(enc, &rel)?;
            }
            relations.insert(rel.relid, enc);
        }
        Message::Truncate { relids, .. } => {
            let names: Vec<String> = relids
                .iter()
                .map(|r| match relations.get(r) {
                    Some(Some(enc)) => enc.name.clone(),
                    _ => format!("relation {r}"),
                })
                .collect();
            return Err(Error::Truncate {
                table: names.join(", "),
            });
        }
        Message::Insert { relid, new } => {
            let Some(enc) = relation(relations, relid)? else {
                return Ok(());
            };
            let tail = tail_of(&enc)?;
            let row = to_row(&enc, &new, None)?;
            let key = enc.key_of(&row);
            push(batch, &enc, Op::Create, key, None, Some(row), &tail)?;
        }
        Message::Update { relid, old, new } => {
            let Some(enc) = relation(relations, relid)? else {
                return Ok(());
            };
            let tail = tail_of(&enc)?;
            let before = match &old {
                Some(OldTuple::Full(t)) => Some(to_row(&enc, t, None)?),
                _ => None,
            };
            let after = to_row(&enc, &new, old.as_ref())?;
            let new_key = enc.key_of(&after);
            let old_key = match &old {
                Some(OldTuple::Full(_)) => before.as_ref().map(|b| enc.key_of(b)),
                Some(OldTuple::Key(t)) => Some(enc.key_of(&to_row_lenient(&enc, t)?)),
                None => None,
            };
            match old_key {
                Some(old_key) if old_key != new_key => {
                    push(batch, &enc, Op::Delete, old_key, before, None, &tail)?;
                    push(batch, &enc, Op::Create, new_key, None, Some(after), &tail)?;
                }
                _ => push(batch, &enc, Op::Update, new_key, before, Some(after), &tail)?,
            }
        }
        Message::Delete { relid, old } => {
            let Some(enc) = relation(relations, relid)? else {
                return Ok(());
            };
            let tail = tail_of(&enc)?;
            let (key, before) = match &old {
                OldTuple::Full(t) => {
                    let row = to_row(&enc, t, None)?;
                    (enc.key_of(&row), Some(row))
                }
                OldTuple::Key(t) => (enc.key_of(&to_row_lenient(&enc, t)?), None),
            };
            push(batch, &enc, Op::Delete, key, before, None, &tail)?;
        }
        Message::Begin { .. }
        | Message::Commit { .. }
        | Message::Origin { .. }
        | Message::Type { .. }
        | Message::LogicalMessage { .. } => {}
    }
    Ok(())
}

fn push(
    batch: &mut Vec<Item>,
    enc: &TableEncoder,
    op: Op,
    key: Vec<Datum>,
    before: Option<Vec<Datum>>,
    after: Option<Vec<Datum>>,
    tail: &Arc<[u8]>,
) -> Result<(), Error> {
    let p = enc
        .encode(op, &key, before.as_deref(), after.as_deref(), tail)
        .map_err(|e| Error::Encode {
            table: enc.name.clone(),
            source: e,
        })?;
    batch.push(Item::Event(p));
    Ok(())
}

fn relation(
    relations: &HashMap<u32, Option<Arc<TableEncoder>>>,
    relid: u32,
) -> Result<Option<Arc<TableEncoder>>, Error> {
    match relations.get(&relid) {
        Some(enc) => Ok(enc.clone()),
        None => Err(Error::Internal(format!(
            "a change of relation {relid} arrived before its Relation message"
        ))),
    }
}

/// The table as pgoutput describes it must be the table Ferry registered.
fn check_relation(enc: &TableEncoder, rel: &Relation) -> Result<(), Error> {
    let ours: Vec<(&str, u32)> = enc
        .table
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid))
        .collect();
    let theirs: Vec<(&str, u32)> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid))
        .collect();
    if ours != theirs {
        let describe = |cols: &[(&str, u32)]| {
            cols.iter()
                .map(|(n, t)| format!("{n} (type {t})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Error::SchemaChanged {
            table: enc.name.clone(),
            detail: format!(
                "columns were [{}], the change stream now has [{}]",
                describe(&ours),
                describe(&theirs)
            ),
        });
    }
    Ok(())
}

fn to_row(enc: &TableEncoder, tuple: &Tuple, old: Option<&OldTuple>) -> Result<Vec<Datum>, Error> {
    let table = &enc.table;
    if tuple.0.len() != table.columns.len() {
        return Err(Error::SchemaChanged {
            table: enc.name.clone(),
            detail: format!(
                "a row has {} columns, the table has {}",
                tuple.0.len(),
                table.columns.len()
            ),
        });
    }
    let mut row = Vec::with_capacity(tuple.0.len());
    for (i, (value, column)) in tuple.0.iter().zip(&table.columns).enumerate() {
        let value = match value {
            TupleValue::UnchangedToast => match old {
                Some(OldTuple::Full(t)) => match t.0.get(i) {
                    Some(v @ (TupleValue::Text(_) | TupleValue::Null)) => v,
                    _ => return Err(toast_error(enc, &column.name)),
                },
                _ => return Err(toast_error(enc, &column.name)),
            },
            v => v,
        };
        row.push(match value {
            TupleValue::Null => Datum::Null,
            TupleValue::Text(b) => {
                let text = std::str::from_utf8(b).map_err(|_| {
                    Error::Internal(format!(
                        "table {} column {}: text is not UTF-8",
                        enc.name, column.name
                    ))
                })?;
                parse_text(&column.kind, text).map_err(|e| Error::Value {
                    table: enc.name.clone(),
                    column: column.name.clone(),
                    source: e,
                })?
            }
            TupleValue::Binary(_) | TupleValue::UnchangedToast => {
                return Err(Error::Internal(format!(
                    "table {} column {}: unexpected value form",
                    enc.name, column.name
                )))
            }
        });
    }
    Ok(row)
}

/// A key-only old tuple: non-key columns are null and may be marked unchanged.
fn to_row_lenient(enc: &TableEncoder, tuple: &Tuple) -> Result<Vec<Datum>, Error> {
    let cleaned = Tuple(
        tuple
            .0
            .iter()
            .map(|v| match v {
                TupleValue::UnchangedToast => TupleValue::Null,
                v => v.clone(),
            })
            .collect(),
    );
    to_row(enc, &cleaned, None)
}

fn toast_error(enc: &TableEncoder, column: &str) -> Error {
    Error::UnchangedToast {
        table: enc.name.clone(),
        column: column.to_owned(),
        fix: format!(
            "ALTER TABLE {} REPLICA IDENTITY FULL",
            enc.table.qualified()
        ),
    }
}
