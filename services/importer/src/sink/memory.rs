//! An in-memory [`Sink`] for tests: one "database" (shared by every session opened on
//! it) holding rows per table and key, positions per group and partition, and counts
//! per group and table, with the same contract as the PostgreSQL sink: a commit checks
//! every position by compare-and-set first and writes everything or nothing; upserts
//! and tolerant deletes make a replay converge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ferry_shared::catalog::TableName;
use ferry_shared::envelope::Op;
use ferry_shared::position::Vsn;
use ferry_shared::value::format_text;

use crate::error::Failure;
use crate::event::{count, Event};
use crate::sink::{Applied, Counts, Move, Sink, Stored, Written};

/// A row: column name -> value in text form (`None`: NULL).
pub(crate) type Row = BTreeMap<String, Option<String>>;

/// Primary-key values in key order, in text form.
pub(crate) type Key = Vec<Option<String>>;

/// What the in-memory database holds.
#[derive(Clone, Debug, Default)]
pub(crate) struct State {
    /// Tables that exist, with their primary-key columns in key order.
    pub tables: BTreeMap<TableName, Vec<String>>,
    /// Rows per table and key.
    pub rows: BTreeMap<TableName, BTreeMap<Key, Row>>,
    /// (group, topic, partition) -> (next offset, last applied VSN).
    pub positions: BTreeMap<(String, String, i32), (i64, Vsn)>,
    /// (group, table) -> counts.
    pub counts: BTreeMap<(String, TableName), Counts>,
    /// Batches committed.
    pub commits: usize,
}

/// One session on an in-memory database, writing for one consumer group.
#[derive(Clone, Debug)]
pub(crate) struct MemorySink {
    group: String,
    db: Arc<Mutex<State>>,
    /// Every commit of every session waits for it: held by a test, it keeps a worker
    /// in the middle of its transaction.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl MemorySink {
    /// A session of `group` on a new, empty database.
    pub(crate) fn new(group: &str) -> MemorySink {
        MemorySink {
            group: group.to_owned(),
            db: Arc::default(),
            gate: Arc::default(),
        }
    }

    /// Creates `table` with primary key `pk`.
    pub(crate) fn create_table(&self, table: &TableName, pk: &[&str]) {
        self.state()
            .tables
            .insert(table.clone(), pk.iter().map(|c| (*c).to_owned()).collect());
    }

    /// Another session on the same database (another worker, or another importer when
    /// `group` is the same; a replay when it differs).
    pub(crate) fn session(&self, group: &str) -> MemorySink {
        MemorySink {
            group: group.to_owned(),
            db: self.db.clone(),
            gate: self.gate.clone(),
        }
    }

    /// Holds every commit on this database (each waits inside its transaction) until
    /// the guard is dropped.
    pub(crate) fn hold_commits(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.gate
            .clone()
            .try_lock_owned()
            .expect("commits are held once at a time")
    }

    /// A copy of what the database holds now.
    pub(crate) fn snapshot(&self) -> State {
        self.state().clone()
    }

    /// The rows of `table`.
    pub(crate) fn rows(&self, table: &TableName) -> BTreeMap<Key, Row> {
        self.state().rows.get(table).cloned().unwrap_or_default()
    }

    /// This session's group's counts of `table`.
    pub(crate) fn counts(&self, table: &TableName) -> Counts {
        self.state()
            .counts
            .get(&(self.group.clone(), table.clone()))
            .copied()
            .unwrap_or_default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A definite failure about `table`, worded as the PostgreSQL sink's.
fn definite(table: &TableName, what: &str, vsn: Vsn) -> Failure {
    Failure::Definite(format!(
        "table \"{}.{}\" on the memory sink {what} (event vsn {vsn})",
        table.schema, table.name
    ))
}

/// Applies one event to `rows` (a table with primary key `pk`): upserts carry the full
/// new image, deletes tolerate a missing row, a primary-key change removes the old row.
fn apply(
    rows: &mut BTreeMap<Key, Row>,
    pk: &[String],
    table: &TableName,
    e: &Event,
) -> Result<(), Failure> {
    match e.op {
        Op::Delete => {
            let mut key: Key = vec![None; pk.len()];
            let mut seen = 0;
            for (f, v) in e.key_type.fields.iter().zip(&e.key) {
                if let Some(i) = pk.iter().position(|k| *k == f.column) {
                    key[i] = format_text(v);
                    seen += 1;
                }
            }
            if seen != pk.len() {
                return Err(definite(
                    table,
                    "has a primary key other than the stream's key",
                    e.vsn,
                ));
            }
            rows.remove(&key);
        }
        Op::Read | Op::Create | Op::Update => {
            let Some(after) = &e.after else {
                return Err(definite(table, "got an event without a row image", e.vsn));
            };
            if after.len() != e.row_type.fields.len() {
                return Err(definite(table, "got an event of the wrong width", e.vsn));
            }
            let index = |k: &String| e.row_type.fields.iter().position(|f| f.column == *k);
            let mut pk_idx = Vec::with_capacity(pk.len());
            for k in pk {
                match index(k) {
                    Some(i) => pk_idx.push(i),
                    None => {
                        return Err(definite(
                            table,
                            &format!(
                                "has primary key column \"{k}\", which the stream does not carry"
                            ),
                            e.vsn,
                        ))
                    }
                }
            }
            let key: Key = pk_idx.iter().map(|&i| format_text(&after[i])).collect();
            if e.op == Op::Update {
                if let Some(before) = &e.before {
                    let old: Key = pk_idx
                        .iter()
                        .map(|&i| before.get(i).and_then(format_text))
                        .collect();
                    if old.iter().all(Option::is_some) && old != key {
                        rows.remove(&old);
                    }
                }
            }
            let row = rows.entry(key).or_default();
            for (f, v) in e.row_type.fields.iter().zip(after) {
                row.insert(f.column.clone(), format_text(v));
            }
        }
    }
    Ok(())
}

impl Sink for MemorySink {
    async fn load_positions(&self, parts: &[(String, i32)]) -> Result<Vec<Stored>, Failure> {
        let mut state = self.state();
        Ok(parts
            .iter()
            .map(|(topic, partition)| {
                let (next_offset, last_vsn) = *state
                    .positions
                    .entry((self.group.clone(), topic.clone(), *partition))
                    .or_insert((0, Vsn::ZERO));
                Stored {
                    topic: topic.clone(),
                    partition: *partition,
                    next_offset,
                    last_vsn,
                }
            })
            .collect())
    }

    async fn commit(
        &mut self,
        events: &mut BTreeMap<TableName, Vec<Event>>,
        moves: &mut [Move<'_>],
    ) -> Result<Written, Failure> {
        drop(self.gate.lock().await);
        let mut state = self.state();
        // The transaction: work on a copy, keep it only if everything succeeds.
        let mut next = state.clone();
        moves.sort_by(|a, b| (&a.1.topic, a.1.partition).cmp(&(&b.1.topic, b.1.partition)));
        for (expected, new) in moves.iter() {
            let key = (self.group.clone(), new.topic.clone(), new.partition);
            match next.positions.get_mut(&key) {
                Some(p) if p.0 == *expected => *p = (new.next_offset, new.last_vsn),
                _ => {
                    return Err(Failure::Conflict(format!(
                        "{}[{}]",
                        new.topic, new.partition
                    )))
                }
            }
        }
        let mut counts = BTreeMap::new();
        for (name, evs) in events.iter_mut() {
            evs.sort_by_key(|e| e.vsn);
            let first = evs.first().map(|e| e.vsn).unwrap_or_default();
            let Some(pk) = next.tables.get(name).cloned() else {
                return Err(definite(name, "does not exist", first));
            };
            let rows = next.rows.entry(name.clone()).or_default();
            for e in evs.iter() {
                apply(rows, &pk, name, e)?;
            }
            counts.insert(name.clone(), count(evs));
        }
        for (name, c) in &counts {
            let t = next
                .counts
                .entry((self.group.clone(), name.clone()))
                .or_default();
            t.snapshot_rows += c.snapshot_rows;
            t.inserts += c.inserts;
            t.updates += c.updates;
            t.deletes += c.deletes;
        }
        next.commits += 1;
        *state = next;
        Ok((counts, Applied::default()))
    }
}
