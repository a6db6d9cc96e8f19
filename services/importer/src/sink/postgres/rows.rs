//! Events turned into row operations on a destination table, and grouped into runs that
//! one statement each can write.
//!
//! Order: events of a table are applied in VSN order (the stream's total order, which
//! also orders events of different partitions in the same batch). For a table whose only
//! unique constraint is its primary key, only the last event per key matters: the batch
//! collapses to one delete statement and then upserts ([`collapse`]). A table with other
//! unique constraints keeps the exact order: consecutive events of the same kind share a
//! statement (rows processed in order), and a run is cut before a key repeats
//! ([`runs`]), so a unique value freed by an earlier event is free when a later one
//! takes it.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use ferry_shared::avro::RecordType;
use ferry_shared::envelope::Op;
use ferry_shared::position::Vsn;
use ferry_shared::value::{format_text, Datum};

use super::catalog::{quoted_name, DestTable};
use crate::error::Failure;
use crate::event::Event;

/// What one event does to one row, in destination terms.
#[derive(Debug)]
pub(super) enum RowOp<'a> {
    Delete {
        key: Vec<Option<String>>,
    },
    Upsert {
        /// Destination column names, in the event's field order (shared by events
        /// written with the same schema).
        cols: Arc<Vec<String>>,
        /// The new row image, in the same order.
        values: &'a [Datum],
        key: Vec<Option<String>>,
        snapshot: bool,
    },
}

impl RowOp<'_> {
    pub(super) fn key(&self) -> &[Option<String>] {
        match self {
            RowOp::Delete { key } | RowOp::Upsert { key, .. } => key,
        }
    }
}

/// Turns events into row operations, checking every column exists on the destination.
pub(super) struct Mapper<'a> {
    table: &'a DestTable,
    /// Row layouts seen in this batch (by address; the batch holds the `Arc`s) ->
    /// (column names, index of each pk column).
    layouts: HashMap<usize, Layout>,
    /// The last one looked up (most events of a table share one).
    last: Option<(usize, Layout)>,
}

/// A row layout's destination column names and the index of each pk column.
pub(super) type Layout = (Arc<Vec<String>>, Arc<[usize]>);

impl<'a> Mapper<'a> {
    pub(super) fn new(table: &'a DestTable) -> Mapper<'a> {
        Mapper {
            table,
            layouts: HashMap::new(),
            last: None,
        }
    }

    pub(super) fn layout(
        &mut self,
        row_type: &Arc<RecordType>,
        vsn: Vsn,
    ) -> Result<Layout, Failure> {
        let addr = Arc::as_ptr(row_type) as usize;
        if let Some((a, l)) = &self.last {
            if *a == addr {
                return Ok(l.clone());
            }
        }
        if let Some(l) = self.layouts.get(&addr) {
            self.last = Some((addr, l.clone()));
            return Ok(l.clone());
        }
        let mut cols = Vec::with_capacity(row_type.fields.len());
        for f in &row_type.fields {
            if !self.table.types.contains_key(&f.column) {
                return Err(self.table.definite(
                    &format!("has no column \"{}\"", f.column),
                    vsn,
                    "add the column",
                ));
            }
            cols.push(f.column.clone());
        }
        let mut pk_idx = Vec::with_capacity(self.table.pk.len());
        for k in &self.table.pk {
            match cols.iter().position(|c| c == k) {
                Some(i) => pk_idx.push(i),
                None => {
                    return Err(self.table.definite(
                        &format!("has primary key column \"{k}\", which the stream does not carry"),
                        vsn,
                        "give the table the source's primary key",
                    ))
                }
            }
        }
        let l: Layout = (Arc::new(cols), pk_idx.into());
        self.layouts.insert(addr, l.clone());
        self.last = Some((addr, l.clone()));
        Ok(l)
    }

    fn key_from_record(&self, e: &Event) -> Result<Vec<Option<String>>, Failure> {
        let mut key = vec![None; self.table.pk.len()];
        let mut seen = 0;
        for (f, v) in e.key_type.fields.iter().zip(&e.key) {
            if let Some(i) = self.table.pk.iter().position(|k| *k == f.column) {
                key[i] = format_text(v);
                seen += 1;
            }
        }
        if seen != self.table.pk.len() {
            return Err(self.table.definite(
                "has a primary key other than the stream's key",
                e.vsn,
                "give the table the source's primary key",
            ));
        }
        Ok(key)
    }

    pub(super) fn map<'e>(
        &mut self,
        e: &'e Event,
        out: &mut Vec<(Vsn, RowOp<'e>)>,
    ) -> Result<(), Failure> {
        match e.op {
            Op::Delete => {
                let key = self.key_from_record(e)?;
                out.push((e.vsn, RowOp::Delete { key }));
            }
            Op::Read | Op::Create | Op::Update => {
                let Some(after) = &e.after else {
                    return Err(Failure::Definite(format!(
                        "event vsn {} of table {} is an {} without a row image; the stream is damaged",
                        e.vsn,
                        quoted_name(&e.table),
                        e.op
                    )));
                };
                let (cols, pk_idx) = self.layout(&e.row_type, e.vsn)?;
                if after.len() != cols.len() {
                    return Err(Failure::Definite(format!(
                        "event vsn {} of table {} has {} values for {} columns; the stream is damaged",
                        e.vsn,
                        quoted_name(&e.table),
                        after.len(),
                        cols.len()
                    )));
                }
                let values: &[Datum] = after;
                let key: Vec<Option<String>> =
                    pk_idx.iter().map(|&i| format_text(&values[i])).collect();
                if e.op == Op::Update {
                    // A primary-key change: the old row goes away.
                    if let Some(before) = &e.before {
                        let old: Vec<Option<String>> = pk_idx
                            .iter()
                            .map(|&i| before.get(i).and_then(format_text))
                            .collect();
                        if old.iter().all(Option::is_some) && old != key {
                            out.push((e.vsn, RowOp::Delete { key: old }));
                        }
                    }
                }
                out.push((
                    e.vsn,
                    RowOp::Upsert {
                        cols,
                        values,
                        key,
                        snapshot: e.op == Op::Read,
                    },
                ));
            }
        }
        Ok(())
    }
}

/// The last operation per key; deletes first, then upserts in stream order.
pub(super) fn collapse(ops: Vec<(Vsn, RowOp<'_>)>) -> Vec<(Vsn, RowOp<'_>)> {
    let mut keep = vec![false; ops.len()];
    {
        let mut last: HashMap<&[Option<String>], usize> = HashMap::with_capacity(ops.len());
        for (i, (_, op)) in ops.iter().enumerate() {
            last.insert(op.key(), i);
        }
        for i in last.into_values() {
            keep[i] = true;
        }
    }
    let (mut deletes, mut upserts) = (Vec::new(), Vec::new());
    for (item, keep) in ops.into_iter().zip(keep) {
        if keep {
            match item.1 {
                RowOp::Delete { .. } => deletes.push(item),
                RowOp::Upsert { .. } => upserts.push(item),
            }
        }
    }
    deletes.extend(upserts);
    deletes
}

/// Consecutive operations of one kind (and one column list) with distinct keys.
pub(super) fn runs(ops: Vec<(Vsn, RowOp<'_>)>) -> Vec<Vec<(Vsn, RowOp<'_>)>> {
    let mut out: Vec<Vec<(Vsn, RowOp<'_>)>> = Vec::new();
    // Hashes of the run's keys: a collision only starts a new run early, which is safe.
    let hasher = std::collections::hash_map::RandomState::new();
    let mut keys: HashSet<u64> = HashSet::new();
    for item in ops {
        let h = hasher.hash_one(item.1.key());
        let same = out
            .last()
            .and_then(|run| run.last())
            .is_some_and(|(_, prev)| match (prev, &item.1) {
                (RowOp::Delete { .. }, RowOp::Delete { .. }) => true,
                (
                    RowOp::Upsert {
                        cols: a,
                        snapshot: sa,
                        ..
                    },
                    RowOp::Upsert {
                        cols: b,
                        snapshot: sb,
                        ..
                    },
                ) => sa == sb && (Arc::ptr_eq(a, b) || a == b),
                _ => false,
            })
            && !keys.contains(&h);
        if !same {
            keys.clear();
            out.push(Vec::new());
        }
        keys.insert(h);
        if let Some(run) = out.last_mut() {
            run.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn up(k: &str, snapshot: bool, cols: &Arc<Vec<String>>) -> (Vsn, RowOp<'static>) {
        (
            Vsn(0),
            RowOp::Upsert {
                cols: cols.clone(),
                values: &[],
                key: vec![Some(k.into())],
                snapshot,
            },
        )
    }

    fn del(k: &str) -> (Vsn, RowOp<'static>) {
        (
            Vsn(0),
            RowOp::Delete {
                key: vec![Some(k.into())],
            },
        )
    }

    fn shape(runs: &[Vec<(Vsn, RowOp<'_>)>]) -> Vec<String> {
        runs.iter()
            .map(|r| {
                r.iter()
                    .map(|(_, op)| match op {
                        RowOp::Delete { key } => format!("d{}", key[0].as_deref().unwrap_or("")),
                        RowOp::Upsert { key, snapshot, .. } => format!(
                            "{}{}",
                            if *snapshot { "r" } else { "u" },
                            key[0].as_deref().unwrap_or("")
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn runs_split_at_kind_changes_and_repeated_keys() {
        let cols = Arc::new(vec!["id".to_owned()]);
        let ops = vec![
            up("1", true, &cols),
            up("2", true, &cols),
            up("1", false, &cols),
            up("2", false, &cols),
            up("1", false, &cols),
            del("1"),
            del("2"),
            up("1", false, &cols),
        ];
        assert_eq!(
            shape(&runs(ops)),
            vec!["r1,r2", "u1,u2", "u1", "d1,d2", "u1"]
        );
    }

    #[test]
    fn collapse_keeps_the_last_event_per_key_deletes_first() {
        let cols = Arc::new(vec!["id".to_owned()]);
        let ops = vec![
            up("1", true, &cols),
            up("2", false, &cols),
            del("1"),
            up("3", false, &cols),
            del("2"),
            up("2", false, &cols),
            del("4"),
        ];
        assert_eq!(shape(&runs(collapse(ops))), vec!["d1,d4", "u3,u2"]);
    }
}
