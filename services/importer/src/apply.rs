//! Applying a batch of events to one destination table, inside the batch's transaction.
//!
//! Idempotency (DESIGN.md §4): snapshot rows, inserts and updates are upserts carrying
//! the full new image (`INSERT .. ON CONFLICT (pk) DO UPDATE SET` every column); deletes
//! tolerate a missing row. Replaying any prefix of a stream therefore converges.
//!
//! Values go in as text (`format_text`) and are cast to the destination column's type
//! (`::<format_type>`), which runs the type's input function: exact for every type Ferry
//! moves (see the type round-trip test).
//!
//! Statements are multi-row: snapshot rows go through a text `COPY` into a temporary
//! staging table and one `INSERT .. SELECT`; changes use one `unnest` statement per run.
//!
//! Order: events of a table are applied in VSN order (the stream's total order, which
//! also orders events of different partitions in the same batch). For a table whose only
//! unique constraint is its primary key, only the last event per key matters: the batch
//! collapses to one delete statement and then upserts. A table with other unique
//! constraints keeps the exact order: consecutive events of the same kind share a
//! statement (rows processed in order), and a run is cut before a key repeats, so a
//! unique value freed by an earlier event is free when a later one takes it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use ferry_shared::avro::RecordType;
use ferry_shared::catalog::{self, quote_ident, CatalogError, TableName, TypeCatalog};
use ferry_shared::envelope::Op;
use ferry_shared::position::Vsn;
use ferry_shared::value::{format_text, Datum};
use futures::SinkExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

use crate::error::{classify_pg, describe_pg, hint, Class, Failure};
use crate::metadata::{db_failure, Counts};

/// One decoded event, ready to apply.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// Its place in the stream.
    pub vsn: Vsn,
    /// What happened.
    pub op: Op,
    /// The table it belongs to (the same name on the destination).
    pub table: TableName,
    /// The writer schema's row layout.
    pub row_type: Arc<RecordType>,
    /// The row before (updates and deletes).
    pub before: Option<Vec<Datum>>,
    /// The row after.
    pub after: Option<Vec<Datum>>,
    /// The key record's layout.
    pub key_type: Arc<RecordType>,
    /// The key values.
    pub key: Vec<Datum>,
}

/// A destination table as the importer writes it.
#[derive(Debug)]
pub(crate) struct DestTable {
    name: TableName,
    qualified: String,
    /// Column name -> type as `format_type` writes it.
    types: HashMap<String, String>,
    /// Primary key column names, in key order.
    pk: Vec<String>,
    /// Has a unique constraint besides the primary key: apply in exact order.
    pub exact_order: bool,
}

/// Destination tables, read from the destination's catalog once per session.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    types: Option<TypeCatalog>,
    tables: HashMap<TableName, Arc<DestTable>>,
}

fn quoted_name(t: &TableName) -> String {
    format!("\"{}.{}\"", t.schema, t.name)
}

fn definite(table: &TableName, destination: &str, what: &str, vsn: Vsn, fix: &str) -> Failure {
    Failure::Definite(format!(
        "table {} on the {destination} {what} (event vsn {vsn}): {fix}, then restart the importer; it resumes where it stopped",
        quoted_name(table)
    ))
}

impl Tables {
    /// Forgets what was read (after a definite error the operator may have fixed).
    pub(crate) fn clear(&mut self) {
        self.types = None;
        self.tables.clear();
    }

    /// The destination table `name`, read from the catalog on first use.
    pub(crate) async fn get(
        &mut self,
        client: &Client,
        name: &TableName,
        destination: &str,
        vsn: Vsn,
    ) -> Result<Arc<DestTable>, Failure> {
        if let Some(t) = self.tables.get(name) {
            return Ok(t.clone());
        }
        if self.types.is_none() {
            self.types = Some(
                TypeCatalog::load(client)
                    .await
                    .map_err(|e| catalog_failure(e, name, destination, vsn))?,
            );
        }
        let types = self.types.as_ref().ok_or_else(|| {
            Failure::Transient("the destination's type catalog is not loaded".into())
        })?;
        let schema = catalog::load_table(client, types, name)
            .await
            .map_err(|e| catalog_failure(e, name, destination, vsn))?;
        if schema.primary_key.is_empty() {
            return Err(definite(
                name,
                destination,
                "has no primary key",
                vsn,
                "add the primary key the source table has",
            ));
        }
        let other_unique: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND NOT i.indisprimary",
                &[&name.schema, &name.name],
            )
            .await
            .map_err(|e| db_failure(&format!("reading the indexes of {name}"), &e))?
            .get(0);
        let table = Arc::new(DestTable {
            name: name.clone(),
            qualified: schema.qualified(),
            types: schema
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.type_name.clone()))
                .collect(),
            pk: schema.key_columns().map(|c| c.name.clone()).collect(),
            exact_order: other_unique > 0,
        });
        tracing::debug!(table = %name, exact_order = table.exact_order, "destination table loaded");
        self.tables.insert(name.clone(), table.clone());
        Ok(table)
    }
}

fn catalog_failure(e: CatalogError, name: &TableName, destination: &str, vsn: Vsn) -> Failure {
    match e {
        CatalogError::NoSuchTable(_) => definite(
            name,
            destination,
            "does not exist",
            vsn,
            "create it (ferry import schema)",
        ),
        CatalogError::Query { what, source } => db_failure(&format!("reading {what}"), &source),
        e @ CatalogError::Unsupported(_) => Failure::Definite(format!(
            "{e} (on the {destination}, event vsn {vsn}); change the column's type, then restart the importer"
        )),
    }
}

/// What one event does to one row, in destination terms.
#[derive(Debug)]
enum RowOp {
    Delete {
        key: Vec<Option<String>>,
    },
    Upsert {
        /// Destination column names, in the event's field order (shared by events
        /// written with the same schema).
        cols: Arc<Vec<String>>,
        values: Vec<Option<String>>,
        key: Vec<Option<String>>,
        snapshot: bool,
    },
}

impl RowOp {
    fn key(&self) -> &[Option<String>] {
        match self {
            RowOp::Delete { key } | RowOp::Upsert { key, .. } => key,
        }
    }
}

/// Turns events into row operations, checking every column exists on the destination.
struct Mapper<'a> {
    table: &'a DestTable,
    destination: &'a str,
    /// Row layouts seen in this batch (by address; the batch holds the `Arc`s) ->
    /// (column names, index of each pk column).
    layouts: HashMap<usize, (Arc<Vec<String>>, Vec<usize>)>,
}

impl Mapper<'_> {
    fn layout(
        &mut self,
        row_type: &Arc<RecordType>,
        vsn: Vsn,
    ) -> Result<(Arc<Vec<String>>, Vec<usize>), Failure> {
        if let Some(l) = self.layouts.get(&(Arc::as_ptr(row_type) as usize)) {
            return Ok(l.clone());
        }
        let mut cols = Vec::with_capacity(row_type.fields.len());
        for f in &row_type.fields {
            if !self.table.types.contains_key(&f.column) {
                return Err(definite(
                    &self.table.name,
                    self.destination,
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
                    return Err(definite(
                        &self.table.name,
                        self.destination,
                        &format!("has primary key column \"{k}\", which the stream does not carry"),
                        vsn,
                        "give the table the source's primary key",
                    ))
                }
            }
        }
        let l = (Arc::new(cols), pk_idx);
        self.layouts
            .insert(Arc::as_ptr(row_type) as usize, l.clone());
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
            return Err(definite(
                &self.table.name,
                self.destination,
                "has a primary key other than the stream's key",
                e.vsn,
                "give the table the source's primary key",
            ));
        }
        Ok(key)
    }

    fn map(&mut self, e: &Event, out: &mut Vec<(Vsn, RowOp)>) -> Result<(), Failure> {
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
                let values: Vec<Option<String>> = after.iter().map(format_text).collect();
                let key: Vec<Option<String>> = pk_idx.iter().map(|&i| values[i].clone()).collect();
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

/// Counts of a table's events by op.
pub(crate) fn count(events: &[Event]) -> Counts {
    let mut c = Counts::default();
    for e in events {
        match e.op {
            Op::Read => c.snapshot_rows += 1,
            Op::Create => c.inserts += 1,
            Op::Update => c.updates += 1,
            Op::Delete => c.deletes += 1,
        }
    }
    c
}

/// Applies `events` (all of `table`, in VSN order) inside `tx`.
pub(crate) async fn apply_table(
    tx: &Transaction<'_>,
    table: &DestTable,
    destination: &str,
    events: &[Event],
    stage_counter: &mut u32,
) -> Result<(), Failure> {
    let mut mapper = Mapper {
        table,
        destination,
        layouts: HashMap::new(),
    };
    let mut ops = Vec::with_capacity(events.len());
    for e in events {
        mapper.map(e, &mut ops)?;
    }
    if !table.exact_order {
        ops = collapse(ops);
    }
    for run in runs(ops) {
        execute_run(tx, table, destination, &run, stage_counter).await?;
    }
    Ok(())
}

/// The last operation per key; deletes first, then upserts in stream order.
fn collapse(ops: Vec<(Vsn, RowOp)>) -> Vec<(Vsn, RowOp)> {
    let mut last: HashMap<Vec<Option<String>>, usize> = HashMap::with_capacity(ops.len());
    for (i, (_, op)) in ops.iter().enumerate() {
        last.insert(op.key().to_vec(), i);
    }
    let keep: HashSet<usize> = last.into_values().collect();
    let (mut deletes, mut upserts) = (Vec::new(), Vec::new());
    for (i, item) in ops.into_iter().enumerate() {
        if keep.contains(&i) {
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
fn runs(ops: Vec<(Vsn, RowOp)>) -> Vec<Vec<(Vsn, RowOp)>> {
    let mut out: Vec<Vec<(Vsn, RowOp)>> = Vec::new();
    let mut keys: HashSet<Vec<Option<String>>> = HashSet::new();
    for item in ops {
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
            && !keys.contains(item.1.key());
        if !same {
            keys.clear();
            out.push(Vec::new());
        }
        keys.insert(item.1.key().to_vec());
        if let Some(run) = out.last_mut() {
            run.push(item);
        }
    }
    out
}

fn run_failure(
    e: &tokio_postgres::Error,
    table: &DestTable,
    destination: &str,
    run: &[(Vsn, RowOp)],
) -> Failure {
    let first = run.first().map(|r| r.0).unwrap_or_default();
    let last = run.last().map(|r| r.0).unwrap_or_default();
    let vsns = if first == last {
        format!("event vsn {first}")
    } else {
        format!("events vsn {first}..{last}")
    };
    let text = format!(
        "table {} on the {destination}: {} ({vsns})",
        quoted_name(&table.name),
        describe_pg(e)
    );
    match classify_pg(e) {
        Class::Transient => Failure::Transient(text),
        Class::Definite => Failure::Definite(format!(
            "{text}: {}, then restart the importer; it resumes where it stopped",
            hint(e)
        )),
    }
}

fn conflict_clause(table: &DestTable, cols: &[String]) -> String {
    let pk: Vec<String> = table.pk.iter().map(|c| quote_ident(c)).collect();
    let set: Vec<String> = cols
        .iter()
        .filter(|c| !table.pk.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    if set.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", pk.join(", "))
    } else {
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            pk.join(", "),
            set.join(", ")
        )
    }
}

fn type_of<'a>(table: &'a DestTable, col: &str) -> &'a str {
    table.types.get(col).map(String::as_str).unwrap_or("text")
}

async fn execute_run(
    tx: &Transaction<'_>,
    table: &DestTable,
    destination: &str,
    run: &[(Vsn, RowOp)],
    stage_counter: &mut u32,
) -> Result<(), Failure> {
    let Some((_, first)) = run.first() else {
        return Ok(());
    };
    let fail = |e: tokio_postgres::Error| run_failure(&e, table, destination, run);
    match first {
        RowOp::Delete { .. } => {
            let n = table.pk.len();
            let mut arrays: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(run.len()); n];
            for (_, op) in run {
                for (i, v) in op.key().iter().enumerate() {
                    arrays[i].push(v.clone());
                }
            }
            let params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
            let names: Vec<String> = (1..=n).map(|i| format!("v{i}")).collect();
            let conds: Vec<String> = table
                .pk
                .iter()
                .enumerate()
                .map(|(i, k)| format!("t.{} = u.v{}::{}", quote_ident(k), i + 1, type_of(table, k)))
                .collect();
            let sql = format!(
                "DELETE FROM {} AS t USING unnest({}) AS u({}) WHERE {}",
                table.qualified,
                params.join(", "),
                names.join(", "),
                conds.join(" AND ")
            );
            let refs: Vec<&(dyn ToSql + Sync)> =
                arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            tx.execute(&sql, &refs).await.map_err(fail)?;
        }
        RowOp::Upsert {
            cols,
            snapshot: false,
            ..
        } => {
            let n = cols.len();
            let mut arrays: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(run.len()); n];
            for (_, op) in run {
                if let RowOp::Upsert { values, .. } = op {
                    for (i, v) in values.iter().enumerate() {
                        arrays[i].push(v.clone());
                    }
                }
            }
            let params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
            let names: Vec<String> = (1..=n).map(|i| format!("v{i}")).collect();
            let exprs: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| format!("u.v{}::{}", i + 1, type_of(table, c)))
                .collect();
            let target: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            let sql = format!(
                "INSERT INTO {} ({}) SELECT {} FROM unnest({}) WITH ORDINALITY AS u({}, ferry_ord) \
                 ORDER BY u.ferry_ord {}",
                table.qualified,
                target.join(", "),
                exprs.join(", "),
                params.join(", "),
                names.join(", "),
                conflict_clause(table, cols)
            );
            let refs: Vec<&(dyn ToSql + Sync)> =
                arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            tx.execute(&sql, &refs).await.map_err(fail)?;
        }
        RowOp::Upsert {
            cols,
            snapshot: true,
            ..
        } => {
            *stage_counter += 1;
            let stage = format!("ferry_stage_{}", stage_counter);
            let target: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            let list = target.join(", ");
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {list} FROM {} WITH NO DATA",
                table.qualified
            ))
            .await
            .map_err(fail)?;
            let mut buf = String::with_capacity(run.len() * 64);
            for (_, op) in run {
                if let RowOp::Upsert { values, .. } = op {
                    for (i, v) in values.iter().enumerate() {
                        if i > 0 {
                            buf.push('\t');
                        }
                        match v {
                            None => buf.push_str("\\N"),
                            Some(text) => copy_escape(text, &mut buf),
                        }
                    }
                    buf.push('\n');
                }
            }
            let sink = tx
                .copy_in::<_, Bytes>(&format!("COPY {stage} ({list}) FROM STDIN"))
                .await
                .map_err(fail)?;
            futures::pin_mut!(sink);
            sink.send(Bytes::from(buf)).await.map_err(fail)?;
            sink.finish().await.map_err(fail)?;
            tx.batch_execute(&format!(
                "INSERT INTO {} ({list}) SELECT {list} FROM {stage} {}",
                table.qualified,
                conflict_clause(table, cols)
            ))
            .await
            .map_err(fail)?;
        }
    }
    Ok(())
}

/// Escapes a value for COPY's text format.
fn copy_escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(k: &str, snapshot: bool, cols: &Arc<Vec<String>>) -> (Vsn, RowOp) {
        (
            Vsn(0),
            RowOp::Upsert {
                cols: cols.clone(),
                values: vec![Some(k.into())],
                key: vec![Some(k.into())],
                snapshot,
            },
        )
    }

    fn del(k: &str) -> (Vsn, RowOp) {
        (
            Vsn(0),
            RowOp::Delete {
                key: vec![Some(k.into())],
            },
        )
    }

    fn shape(runs: &[Vec<(Vsn, RowOp)>]) -> Vec<String> {
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

    #[test]
    fn copy_text_is_escaped() {
        let mut out = String::new();
        copy_escape("a\\b\tc\nd\re", &mut out);
        assert_eq!(out, "a\\\\b\\tc\\nd\\re");
    }
}
