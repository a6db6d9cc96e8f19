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
//! Statements are multi-row: snapshot rows go through a `COPY` into a temporary staging
//! table and one `INSERT .. SELECT`; changes use one `unnest` statement per run. The
//! `COPY` is binary when every value of the run has an exact binary form for its
//! destination column ([`binary`]: built-in types, values of the matching shape), and
//! text otherwise, so both store the same values.
//!
//! Order: events of a table are applied in VSN order (the stream's total order, which
//! also orders events of different partitions in the same batch). For a table whose only
//! unique constraint is its primary key, only the last event per key matters: the batch
//! collapses to one delete statement and then upserts. A table with other unique
//! constraints keeps the exact order: consecutive events of the same kind share a
//! statement (rows processed in order), and a run is cut before a key repeats, so a
//! unique value freed by an earlier event is free when a later one takes it.

mod binary;
pub(crate) mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ferry_shared::avro::{AvroType, RecordType};
use ferry_shared::catalog::{self, quote_ident, CatalogError, TableName, TypeCatalog};
use ferry_shared::envelope::Op;
use ferry_shared::position::Vsn;
use ferry_shared::registry::EventDecoder;
use ferry_shared::value::{format_text, write_text, Datum};
use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, ToStatement, Transaction};

use crate::error::{classify_pg, describe_pg, hint, Class, Failure};
use crate::metadata::{db_failure, Counts};
use crate::statements::Statements;

/// One decoded event, ready to apply.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// Its place in the stream.
    pub vsn: Vsn,
    /// What happened.
    pub op: Op,
    /// The table it belongs to (the same name on the destination).
    pub table: Arc<TableName>,
    /// The writer schema's row layout.
    pub row_type: Arc<RecordType>,
    /// The row before (updates and deletes).
    pub before: Option<Vec<Datum>>,
    /// The row after.
    pub after: Option<Vec<Datum>>,
    /// The key record's layout (decoded for deletes only; empty otherwise).
    pub key_type: Arc<RecordType>,
    /// The key values (deletes only).
    pub key: Vec<Datum>,
}

impl Event {
    /// Decodes a record: its value, and for a delete its key (the other kinds carry the
    /// key's values in the row after). `at` names the record in errors. `table` is the
    /// table of the partition's last event: shared, not built again, while it stays the
    /// same.
    pub(crate) async fn decode(
        decoder: &EventDecoder,
        key: Option<&[u8]>,
        payload: &[u8],
        table: &mut Option<Arc<TableName>>,
        at: &(dyn Fn() -> String + Sync),
    ) -> Result<Event, Failure> {
        let decoded = decoder
            .decode_change(payload)
            .await
            .map_err(|e| crate::registry_failure(&e, &at()))?;
        let Some(key) = key else {
            return Err(Failure::Definite(format!(
                "record {} has no key; the stream is damaged",
                at()
            )));
        };
        let (key_type, key) = if decoded.op == Op::Delete {
            let (ty, datum) = decoder
                .decode_datum(key)
                .await
                .map_err(|e| crate::registry_failure(&e, &at()))?;
            match (ty.as_ref(), datum) {
                (AvroType::Record(rt), Datum::Record(values)) => (rt.clone(), values),
                _ => {
                    return Err(Failure::Definite(format!(
                        "record {} has a key that is not a record; the stream is damaged",
                        at()
                    )))
                }
            }
        } else {
            (no_key_type(), Vec::new())
        };
        let name = match table {
            Some(t) if t.schema == decoded.schema && t.name == decoded.table => t.clone(),
            _ => {
                let t = Arc::new(TableName {
                    schema: decoded.schema.to_owned(),
                    name: decoded.table.to_owned(),
                });
                *table = Some(t.clone());
                t
            }
        };
        Ok(Event {
            vsn: decoded.vsn,
            op: decoded.op,
            table: name,
            row_type: decoded.row_type,
            before: decoded.before,
            after: decoded.after,
            key_type,
            key,
        })
    }
}

/// The key layout of events whose key is not decoded.
fn no_key_type() -> Arc<RecordType> {
    static EMPTY: std::sync::OnceLock<Arc<RecordType>> = std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| {
            Arc::new(RecordType {
                name: String::new(),
                fields: Vec::new(),
            })
        })
        .clone()
}

/// A destination table as the importer writes it.
#[derive(Debug)]
pub(crate) struct DestTable {
    name: TableName,
    qualified: String,
    /// Column name -> type as `format_type` writes it.
    types: HashMap<String, String>,
    /// Column name -> type OID (for COPY's binary format).
    oids: HashMap<String, u32>,
    /// Primary key column names, in key order.
    pk: Vec<String>,
    /// Has a unique constraint besides the primary key: apply in exact order.
    pub exact_order: bool,
    /// Columns `GENERATED ALWAYS AS IDENTITY`: inserts name them with `OVERRIDING
    /// SYSTEM VALUE` (the source's value is the truth), and an update may not set them.
    identity_always: Vec<String>,
    /// Snapshot rows of this table were found present already: upsert them through a
    /// staging table instead of copying them straight in.
    staged: AtomicBool,
}

/// Destination tables, read from the destination's catalog once per session.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    types: Option<TypeCatalog>,
    tables: HashMap<TableName, Arc<DestTable>>,
    /// The connection's prepared statements.
    pub statements: Statements,
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
        self.statements.clear();
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
        let identity_always: Vec<String> = client
            .query(
                "SELECT a.attname FROM pg_attribute a \
                 JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 \
                   AND NOT a.attisdropped AND a.attidentity = 'a'",
                &[&name.schema, &name.name],
            )
            .await
            .map_err(|e| db_failure(&format!("reading the identity columns of {name}"), &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let table = Arc::new(DestTable {
            name: name.clone(),
            qualified: schema.qualified(),
            types: schema
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.type_name.clone()))
                .collect(),
            oids: schema
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.type_oid))
                .collect(),
            pk: schema.key_columns().map(|c| c.name.clone()).collect(),
            exact_order: other_unique > 0,
            identity_always,
            staged: AtomicBool::new(false),
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
enum RowOp<'a> {
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
    layouts: HashMap<usize, Layout>,
    /// The last one looked up (most events of a table share one).
    last: Option<(usize, Layout)>,
}

/// A row layout's destination column names and the index of each pk column.
type Layout = (Arc<Vec<String>>, Arc<[usize]>);

impl<'a> Mapper<'a> {
    fn new(table: &'a DestTable, destination: &'a str) -> Mapper<'a> {
        Mapper {
            table,
            destination,
            layouts: HashMap::new(),
            last: None,
        }
    }

    fn layout(&mut self, row_type: &Arc<RecordType>, vsn: Vsn) -> Result<Layout, Failure> {
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

    fn map<'e>(&mut self, e: &'e Event, out: &mut Vec<(Vsn, RowOp<'e>)>) -> Result<(), Failure> {
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

/// How a table's events went in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Snapshot rows written with binary `COPY`.
    pub binary_copy_rows: usize,
    /// Snapshot rows written with text `COPY` (a column type or value without an exact
    /// binary form).
    pub text_copy_rows: usize,
    /// Of those, rows copied straight into the table (none of them existed).
    pub direct_copy_rows: usize,
}

/// Writes one batch in ONE destination transaction (DESIGN.md §4): every table's events
/// (sorted by VSN here), the partitions' new positions — each moved by compare-and-set
/// from the stored next offset it was read at ([`crate::metadata::advance`]) — and the
/// per-table counts. Counts are added last, in table-name order, so that concurrent
/// appliers lock `ferry_metadata.table_counts` rows in one order (no deadlock).
/// Returns the counts per table and how the snapshot rows went in.
pub(crate) async fn commit_batch(
    client: &mut Client,
    tables: &mut Tables,
    group: &str,
    destination: &str,
    events: &mut BTreeMap<TableName, Vec<Event>>,
    positions: &mut [(i64, &crate::metadata::Stored)],
) -> Result<(BTreeMap<TableName, Counts>, Applied), Failure> {
    let mut dest = BTreeMap::new();
    for (name, evs) in events.iter_mut() {
        evs.sort_by_key(|e| e.vsn);
        let first = evs.first().map(|e| e.vsn).unwrap_or_default();
        dest.insert(
            name.clone(),
            tables.get(client, name, destination, first).await?,
        );
    }
    let mut counts = BTreeMap::new();
    let mut applied = Applied::default();
    let tx = client
        .transaction()
        .await
        .map_err(|e| db_failure("starting a transaction", &e))?;
    positions.sort_by(|a, b| (&a.1.topic, a.1.partition).cmp(&(&b.1.topic, b.1.partition)));
    for (expected, new) in positions.iter() {
        crate::metadata::advance(&tx, &mut tables.statements, group, *expected, new).await?;
    }
    let mut stage = 0u32;
    for (name, evs) in events.iter() {
        if let Some(t) = dest.get(name) {
            let a =
                apply_table(&tx, &mut tables.statements, t, destination, evs, &mut stage).await?;
            applied.binary_copy_rows += a.binary_copy_rows;
            applied.text_copy_rows += a.text_copy_rows;
            applied.direct_copy_rows += a.direct_copy_rows;
        }
        counts.insert(name.clone(), count(evs));
    }
    for (name, c) in &counts {
        crate::metadata::add_counts(
            &tx,
            &mut tables.statements,
            group,
            &name.schema,
            &name.name,
            c,
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(|e| db_failure("committing a batch", &e))?;
    Ok((counts, applied))
}

/// Applies `events` (all of `table`, in VSN order) inside `tx`.
pub(crate) async fn apply_table(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    destination: &str,
    events: &[Event],
    stage_counter: &mut u32,
) -> Result<Applied, Failure> {
    apply_table_with(
        tx,
        statements,
        table,
        destination,
        events,
        stage_counter,
        true,
    )
    .await
}

/// [`apply_table`], with binary `COPY` allowed or not (tests compare both).
async fn apply_table_with(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    destination: &str,
    events: &[Event],
    stage_counter: &mut u32,
    binary_copy: bool,
) -> Result<Applied, Failure> {
    if let Some(applied) =
        copy_snapshot_batch(tx, statements, table, destination, events, binary_copy).await?
    {
        return Ok(applied);
    }
    let mut mapper = Mapper::new(table, destination);
    let mut ops = Vec::with_capacity(events.len());
    for e in events {
        mapper.map(e, &mut ops)?;
    }
    if !table.exact_order {
        ops = collapse(ops);
    }
    let mut applied = Applied::default();
    for run in runs(ops) {
        execute_run(
            tx,
            statements,
            table,
            destination,
            &run,
            stage_counter,
            binary_copy,
            &mut applied,
        )
        .await?;
    }
    Ok(applied)
}

/// The common case of a first snapshot: a table's batch of snapshot rows only, all of
/// one row layout, into a table none of them is in yet. They are copied straight in,
/// without the per-row keys that `collapse` and `runs` need. A key that comes twice, or
/// a row already there, fails the `COPY`, which is rolled back; the general path then
/// takes the batch. `None`: not such a batch, or the rows did not go in.
async fn copy_snapshot_batch(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    destination: &str,
    events: &[Event],
    binary_copy: bool,
) -> Result<Option<Applied>, Failure> {
    let Some(first) = events.first() else {
        return Ok(None);
    };
    // A row of the wrong length is damaged: the general path names its event.
    let width = first.row_type.fields.len();
    if table.staged.load(Ordering::Relaxed)
        || !events.iter().all(|e| {
            e.op == Op::Read
                && Arc::ptr_eq(&e.row_type, &first.row_type)
                && e.after.as_ref().is_some_and(|a| a.len() == width)
        })
    {
        return Ok(None);
    }
    // One column per field of the layout (checked against the destination).
    let mut mapper = Mapper::new(table, destination);
    let (cols, _) = mapper.layout(&first.row_type, first.vsn)?;
    let rows = events.iter().filter_map(|e| e.after.as_deref());
    let payload = copy_payload(table, &cols, rows, events.len(), binary_copy);
    let last = events.last().map_or(first.vsn, |e| e.vsn);
    let copied = copy_direct(tx, statements, table, &column_list(&cols), &payload)
        .await
        .map_err(|e| vsn_failure(&e, table, destination, first.vsn, last))?;
    if !copied {
        return Ok(None);
    }
    let mut applied = Applied::default();
    payload.count(&mut applied, events.len());
    applied.direct_copy_rows = events.len();
    Ok(Some(applied))
}

/// The last operation per key; deletes first, then upserts in stream order.
fn collapse(ops: Vec<(Vsn, RowOp<'_>)>) -> Vec<(Vsn, RowOp<'_>)> {
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
fn runs(ops: Vec<(Vsn, RowOp<'_>)>) -> Vec<Vec<(Vsn, RowOp<'_>)>> {
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

fn run_failure(
    e: &tokio_postgres::Error,
    table: &DestTable,
    destination: &str,
    run: &[(Vsn, RowOp<'_>)],
) -> Failure {
    let first = run.first().map(|r| r.0).unwrap_or_default();
    let last = run.last().map(|r| r.0).unwrap_or_default();
    vsn_failure(e, table, destination, first, last)
}

/// A failure writing the events `first..=last` of `table`.
fn vsn_failure(
    e: &tokio_postgres::Error,
    table: &DestTable,
    destination: &str,
    first: Vsn,
    last: Vsn,
) -> Failure {
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

impl DestTable {
    /// `OVERRIDING SYSTEM VALUE ` when `cols` names a `GENERATED ALWAYS` identity column
    /// (PostgreSQL refuses its value otherwise: SQLSTATE 428C9), else empty.
    fn overriding(&self, cols: &[String]) -> &'static str {
        if cols.iter().any(|c| self.identity_always.contains(c)) {
            "OVERRIDING SYSTEM VALUE "
        } else {
            ""
        }
    }

    /// The `GENERATED ALWAYS` identity columns of `cols` outside the primary key, with
    /// their places in `cols`: an `ON CONFLICT DO UPDATE` may not set them (only to
    /// DEFAULT), so a row whose value of one changed (the source ran `SET col = DEFAULT`)
    /// is deleted first and inserted anew; every other row is updated as usual.
    fn identity_outside_key<'a>(&self, cols: &'a [String]) -> Vec<(usize, &'a String)> {
        cols.iter()
            .enumerate()
            .filter(|(_, c)| self.identity_always.contains(c) && !self.pk.contains(c))
            .collect()
    }
}

fn conflict_clause(table: &DestTable, cols: &[String]) -> String {
    let pk: Vec<String> = table.pk.iter().map(|c| quote_ident(c)).collect();
    let set: Vec<String> = cols
        .iter()
        .filter(|c| !table.pk.contains(c) && !table.identity_always.contains(c))
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

#[allow(clippy::too_many_arguments)]
async fn execute_run(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    destination: &str,
    run: &[(Vsn, RowOp<'_>)],
    stage_counter: &mut u32,
    binary_copy: bool,
    applied: &mut Applied,
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
            let statement = statements.get(tx, &sql).await.map_err(fail)?;
            tx.execute(&statement, &refs).await.map_err(fail)?;
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
                        arrays[i].push(format_text(v));
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
            let refs: Vec<&(dyn ToSql + Sync)> =
                arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            let identity = table.identity_outside_key(cols);
            if !identity.is_empty() {
                // Rows whose identity value changed go first: the insert below makes them
                // anew, and updates the others.
                let keys: Vec<String> = table
                    .pk
                    .iter()
                    .filter_map(|k| cols.iter().position(|c| c == k).map(|i| (k, i)))
                    .map(|(k, i)| {
                        format!("t.{} = u.v{}::{}", quote_ident(k), i + 1, type_of(table, k))
                    })
                    .collect();
                let changed: Vec<String> = identity
                    .iter()
                    .map(|(i, c)| {
                        format!(
                            "t.{} IS DISTINCT FROM u.v{}::{}",
                            quote_ident(c),
                            i + 1,
                            type_of(table, c)
                        )
                    })
                    .collect();
                let sql = format!(
                    "DELETE FROM {} AS t USING unnest({}) AS u({}) WHERE {} AND ({})",
                    table.qualified,
                    params.join(", "),
                    names.join(", "),
                    keys.join(" AND "),
                    changed.join(" OR ")
                );
                let statement = statements.get(tx, &sql).await.map_err(fail)?;
                tx.execute(&statement, &refs).await.map_err(fail)?;
            }
            let conflict = conflict_clause(table, cols);
            let sql = format!(
                "INSERT INTO {} ({}) {}SELECT {} FROM unnest({}) WITH ORDINALITY AS u({}, ferry_ord) \
                 ORDER BY u.ferry_ord {}",
                table.qualified,
                target.join(", "),
                table.overriding(cols),
                exprs.join(", "),
                params.join(", "),
                names.join(", "),
                conflict
            );
            let statement = statements.get(tx, &sql).await.map_err(fail)?;
            tx.execute(&statement, &refs).await.map_err(fail)?;
        }
        RowOp::Upsert {
            cols,
            snapshot: true,
            ..
        } => {
            let list = column_list(cols);
            let rows = run.iter().filter_map(|(_, op)| match op {
                RowOp::Upsert { values, .. } => Some(*values),
                RowOp::Delete { .. } => None,
            });
            let payload = copy_payload(table, cols, rows, run.len(), binary_copy);
            payload.count(applied, run.len());
            if copy_direct(tx, statements, table, &list, &payload)
                .await
                .map_err(fail)?
            {
                applied.direct_copy_rows += run.len();
                return Ok(());
            }
            let (format, payload) = (payload.format, payload.data);
            *stage_counter += 1;
            let stage = format!("ferry_stage_{}", stage_counter);
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {list} FROM {} WITH NO DATA",
                table.qualified
            ))
            .await
            .map_err(fail)?;
            copy_in(
                tx,
                format!("COPY {stage} ({list}) FROM STDIN{format}").as_str(),
                payload,
            )
            .await
            .map_err(fail)?;
            let identity = table.identity_outside_key(cols);
            if !identity.is_empty() {
                let keys: Vec<String> = table
                    .pk
                    .iter()
                    .map(|k| format!("t.{0} = s.{0}", quote_ident(k)))
                    .collect();
                let changed: Vec<String> = identity
                    .iter()
                    .map(|(_, c)| format!("t.{0} IS DISTINCT FROM s.{0}", quote_ident(c)))
                    .collect();
                tx.batch_execute(&format!(
                    "DELETE FROM {} AS t USING {stage} AS s WHERE {} AND ({})",
                    table.qualified,
                    keys.join(" AND "),
                    changed.join(" OR ")
                ))
                .await
                .map_err(fail)?;
            }
            let conflict = conflict_clause(table, cols);
            tx.batch_execute(&format!(
                "INSERT INTO {} ({list}) {}SELECT {list} FROM {stage} {}",
                table.qualified,
                table.overriding(cols),
                conflict
            ))
            .await
            .map_err(fail)?;
        }
    }
    Ok(())
}

/// `"a", "b", ...`: the quoted column names.
fn column_list(cols: &[String]) -> String {
    let target: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
    target.join(", ")
}

/// Snapshot rows as a `COPY` payload.
struct CopyPayload {
    /// `" (FORMAT binary)"` or `""` (text).
    format: &'static str,
    data: Bytes,
}

impl CopyPayload {
    /// Adds `rows` to the binary or the text count.
    fn count(&self, applied: &mut Applied, rows: usize) {
        if self.format.is_empty() {
            applied.text_copy_rows += rows;
        } else {
            applied.binary_copy_rows += rows;
        }
    }
}

/// Encodes `rows` (values in `cols` order) for `COPY`: binary when `binary_copy` and
/// every column and value has an exact binary form, else text.
fn copy_payload<'a>(
    table: &DestTable,
    cols: &[String],
    rows: impl Iterator<Item = &'a [Datum]> + Clone,
    n: usize,
    binary_copy: bool,
) -> CopyPayload {
    let encodings: Option<Vec<binary::Encoding>> = if binary_copy {
        cols.iter()
            .map(|c| table.oids.get(c).and_then(|&oid| binary::Encoding::of(oid)))
            .collect()
    } else {
        None
    };
    if let Some(data) = encodings.and_then(|e| binary::encode_rows(&e, rows.clone(), n)) {
        return CopyPayload {
            format: " (FORMAT binary)",
            data,
        };
    }
    tracing::debug!(table = %table.name, rows = n, "snapshot rows go in with text COPY: a column's type or a value has no exact binary form");
    let mut buf = String::with_capacity(n * 64);
    let mut text = String::new();
    for values in rows {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            text.clear();
            if write_text(v, &mut text) {
                copy_escape(&text, &mut buf);
            } else {
                buf.push_str("\\N");
            }
        }
        buf.push('\n');
    }
    CopyPayload {
        format: "",
        data: Bytes::from(buf),
    }
}

/// Copies snapshot rows straight into the table while none of them exists (a first
/// snapshot): the same result as the upsert, without staging. True when the rows went
/// in. A unique violation (a row exists already, or a key comes twice) rolls the `COPY`
/// back and returns false: the rows then go through the staging table, and so does this
/// table for the rest of the session.
async fn copy_direct(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    list: &str,
    payload: &CopyPayload,
) -> Result<bool, tokio_postgres::Error> {
    if table.staged.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let sql = format!(
        "COPY {} ({list}) FROM STDIN{}",
        table.qualified, payload.format
    );
    let statement = statements.get(tx, &sql).await?;
    // The savepoint goes out with the COPY (one round trip) and stays until the commit.
    let (saved, copied) = futures::join!(
        tx.batch_execute("SAVEPOINT ferry_copy"),
        copy_in(tx, &statement, payload.data.clone())
    );
    saved?;
    match copied {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::debug!(table = %table.name, "snapshot rows exist already; upserting them through a staging table");
            table.staged.store(true, Ordering::Relaxed);
            tx.batch_execute("ROLLBACK TO SAVEPOINT ferry_copy").await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Runs `statement` (a `COPY .. FROM STDIN`) with `payload` as its data.
async fn copy_in<S: ToStatement + ?Sized>(
    tx: &Transaction<'_>,
    statement: &S,
    payload: Bytes,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(statement).await?;
    futures::pin_mut!(sink);
    sink.send(payload).await?;
    sink.finish().await?;
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

    /// (column, source type, destination type, a value per row as SQL, row 3 is NULL).
    const TYPED: &[(&str, &str, &str, [&str; 4])] = &[
        (
            "b",
            "boolean",
            "boolean",
            ["true", "false", "true", "false"],
        ),
        ("i2", "smallint", "smallint", ["1", "-32768", "32767", "0"]),
        (
            "i4",
            "integer",
            "integer",
            ["2", "-2147483648", "2147483647", "0"],
        ),
        (
            "i8",
            "bigint",
            "bigint",
            ["3", "-9223372036854775808", "9223372036854775807", "0"],
        ),
        (
            "f4",
            "real",
            "real",
            ["1.5", "'NaN'", "'-Infinity'", "'-0'"],
        ),
        (
            "f4b",
            "real",
            "real",
            ["3.4028235e38", "1e-45", "'Infinity'", "1.1"],
        ),
        (
            "f8",
            "double precision",
            "double precision",
            ["0.1", "'NaN'", "5e-324", "'-0'"],
        ),
        (
            "f8b",
            "double precision",
            "double precision",
            ["1.7976931348623157e308", "'-Infinity'", "-2.5", "1e-300"],
        ),
        (
            "n",
            "numeric(30,6)",
            "numeric(30,2)",
            [
                "123.456789",
                "-999999999999999999999999.999999",
                "0.005",
                "-0.004999",
            ],
        ),
        (
            "n4",
            "numeric(12,4)",
            "numeric(12,4)",
            ["1.2345", "-0.0001", "0", "10000"],
        ),
        (
            "nu",
            "numeric",
            "numeric",
            ["123.4500", "-0.000000001", "0.000", "1e-20"],
        ),
        (
            "nb",
            "numeric(1000,0)",
            "numeric(1000,0)",
            [
                "repeat('9', 1000)::numeric",
                "('-' || repeat('9', 999))::numeric",
                "1",
                "0",
            ],
        ),
        (
            "t",
            "text",
            "text",
            [
                "'hello'",
                "E'tab\\there\\nnew\\\\back\\r'",
                "''",
                "'😀é\\N'",
            ],
        ),
        (
            "vc",
            "text",
            "character varying(16)",
            ["'vc'", "'abcdefghijklmnop   '", "''", "'é'"],
        ),
        (
            "ch",
            "text",
            "character(5)",
            ["'ab'", "''", "'abcde  '", "'é'"],
        ),
        (
            "js",
            "json",
            "json",
            [r#"'{"a": [1, 2.50]}'"#, "'null'", "'[]'", r#"'"x\"y"'"#],
        ),
        (
            "jb",
            "jsonb",
            "jsonb",
            [
                r#"'{"b": 1, "a": "é"}'"#,
                "'[]'",
                "'1.50'",
                r#"'{"k": {"n": null}}'"#,
            ],
        ),
        ("it", "integer", "text", ["42", "-1", "0", "2147483647"]),
        (
            "tzt",
            "timestamptz",
            "text",
            [
                "'2024-05-06 07:08:09.123456+05:30'",
                "'4713-01-01 00:00:00+00 BC'",
                "'2000-01-01 00:00:00+00'",
                "'1969-12-31 23:59:59.999999+00'",
            ],
        ),
        (
            "by",
            "bytea",
            "bytea",
            [r"'\x00ff'", r"'\x'", r"'\x5c0a09'", r"'\xdeadbeef'"],
        ),
        (
            "d",
            "date",
            "date",
            [
                "'2024-02-29'",
                "'4713-01-01 BC'",
                "'5874897-12-31'",
                "'2000-01-01'",
            ],
        ),
        (
            "tm",
            "time",
            "time",
            [
                "'12:34:56.789012'",
                "'00:00:00'",
                "'24:00:00'",
                "'23:59:59.999999'",
            ],
        ),
        (
            "tm3",
            "time",
            "time(3)",
            [
                "'12:34:56.789512'",
                "'00:00:00.0005'",
                "'23:59:59.9999'",
                "'01:02:03'",
            ],
        ),
        (
            "ts",
            "timestamp",
            "timestamp",
            [
                "'2024-05-06 07:08:09.123456'",
                "'4713-01-01 00:00:00 BC'",
                "'294000-01-01 00:00:00'",
                "'1970-01-01 00:00:00'",
            ],
        ),
        (
            "ts0",
            "timestamp",
            "timestamp(0)",
            [
                "'2024-05-06 07:08:09.5'",
                "'1999-12-31 23:59:59.499999'",
                "'0001-01-01 00:00:00'",
                "'2000-01-01 00:00:00'",
            ],
        ),
        (
            "tz",
            "timestamptz",
            "timestamptz",
            [
                "'2024-05-06 07:08:09.123456+05:30'",
                "'4713-01-01 00:00:00+00 BC'",
                "'2000-01-01 00:00:00+00'",
                "'1969-12-31 23:59:59.999999+00'",
            ],
        ),
        (
            "tz2",
            "timestamptz",
            "timestamptz(2)",
            [
                "'2024-05-06 07:08:09.125+00'",
                "'2024-05-06 07:08:09.999999+00'",
                "'2000-01-01 00:00:00+00'",
                "'1900-01-01 00:00:00+00'",
            ],
        ),
        (
            "u",
            "uuid",
            "uuid",
            [
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                "'00000000-0000-0000-0000-000000000000'",
                "'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'",
                "'{a0eebc999c0b4ef8bb6d6bb9bd380a11}'",
            ],
        ),
        (
            "ai",
            "integer[]",
            "integer[]",
            ["'{1,NULL,3}'", "'{}'", "'{-2147483648}'", "'{NULL}'"],
        ),
        (
            "ai2",
            "smallint[]",
            "smallint[]",
            ["'{-32768,32767}'", "'{}'", "'{0}'", "'{NULL,1}'"],
        ),
        (
            "ai8",
            "bigint[]",
            "bigint[]",
            ["'{-9223372036854775808}'", "'{}'", "'{1,2,3}'", "'{NULL}'"],
        ),
        (
            "at",
            "text[]",
            "text[]",
            [
                r#"'{"a,b","NULL",NULL,"","\"q\"","\\"}'"#,
                "'{}'",
                "'{é}'",
                "'{\" x \"}'",
            ],
        ),
        (
            "an",
            "numeric(10,2)[]",
            "numeric(10,2)[]",
            ["'{1.50,NULL,-0.01}'", "'{}'", "'{0}'", "'{99999999.99}'"],
        ),
        (
            "ann",
            "numeric[]",
            "numeric[]",
            ["'{1.500,NULL,-0.01}'", "'{}'", "'{0.0}'", "'{1e10}'"],
        ),
        (
            "atz",
            "timestamptz[]",
            "timestamptz[]",
            [
                r#"'{"2024-01-01 00:00:00+00",NULL}'"#,
                "'{}'",
                r#"'{"4713-01-01 00:00:00+00 BC"}'"#,
                r#"'{"2000-01-01 00:00:00.000001+00"}'"#,
            ],
        ),
        (
            "ats",
            "timestamp[]",
            "timestamp[]",
            [
                r#"'{"2024-01-01 00:00:00"}'"#,
                "'{}'",
                r#"'{"1999-12-31 23:59:59.999999"}'"#,
                "'{NULL}'",
            ],
        ),
        (
            "ab",
            "boolean[]",
            "boolean[]",
            ["'{t,f,NULL}'", "'{}'", "'{t}'", "'{f}'"],
        ),
        (
            "af",
            "double precision[]",
            "double precision[]",
            [
                "'{NaN,Infinity,-0,1e-300}'",
                "'{}'",
                "'{-Infinity}'",
                "'{0.1}'",
            ],
        ),
        (
            "af4",
            "real[]",
            "real[]",
            ["'{NaN,1.1,-0}'", "'{}'", "'{3.4028235e38}'", "'{NULL}'"],
        ),
        (
            "aby",
            "bytea[]",
            "bytea[]",
            [
                r#"'{"\\x00",NULL}'"#,
                "'{}'",
                r#"'{"\\x"}'"#,
                r#"'{"\\xff"}'"#,
            ],
        ),
        (
            "au",
            "uuid[]",
            "uuid[]",
            [
                "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
                "'{}'",
                "'{NULL}'",
                "'{00000000-0000-0000-0000-000000000001}'",
            ],
        ),
        (
            "ad",
            "date[]",
            "date[]",
            [
                "'{2024-01-01,\"0001-01-01 BC\"}'",
                "'{}'",
                "'{5874897-12-31}'",
                "'{NULL}'",
            ],
        ),
        (
            "atm",
            "time[]",
            "time[]",
            [
                "'{24:00:00,00:00:00.000001}'",
                "'{}'",
                "'{NULL}'",
                "'{12:00:00}'",
            ],
        ),
        (
            "avc",
            "text[]",
            "character varying(4)[]",
            ["'{abcd,x}'", "'{}'", "'{\"ab  \"}'", "'{NULL}'"],
        ),
        (
            "ach",
            "character(2)[]",
            "character(2)[]",
            ["'{a,bc}'", "'{}'", "'{NULL}'", "'{\"  \"}'"],
        ),
        (
            "ajb",
            "jsonb[]",
            "jsonb[]",
            [r#"'{"{\"k\": 1}"}'"#, "'{}'", "'{NULL}'", r#"'{"[1, 2]"}'"#],
        ),
    ];

    /// Reads `src` (with the session settings) into snapshot events of `table`, as the
    /// exporter would: each column's text parsed for its source kind.
    async fn snapshot_events(client: &Client, table: &str) -> Vec<Event> {
        use ferry_shared::avro::{AvroType, FieldType};
        use ferry_shared::catalog::TypeCatalog;
        let types = TypeCatalog::load(client).await.unwrap();
        let src = catalog::load_table(
            client,
            &types,
            &TableName {
                schema: "public".into(),
                name: "src".into(),
            },
        )
        .await
        .unwrap();
        let record = |cols: Vec<String>| {
            Arc::new(RecordType {
                name: "r".into(),
                fields: cols
                    .into_iter()
                    .map(|c| FieldType {
                        name: c.clone(),
                        column: c,
                        pg_type: None,
                        ty: AvroType::Null,
                    })
                    .collect(),
            })
        };
        let row_type = record(src.columns.iter().map(|c| c.name.clone()).collect());
        let key_type = record(vec!["id".into()]);
        let list: Vec<String> = src
            .columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(&c.name)))
            .collect();
        let rows = client
            .query(
                &format!("SELECT {} FROM src ORDER BY id", list.join(", ")),
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .enumerate()
            .map(|(n, row)| {
                let after: Vec<Datum> = src
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match row.get::<_, Option<String>>(i) {
                        None => Datum::Null,
                        Some(text) => ferry_shared::value::parse_text(&c.kind, &text).unwrap(),
                    })
                    .collect();
                Event {
                    vsn: Vsn(n as u64 + 1),
                    op: Op::Read,
                    table: Arc::new(TableName {
                        schema: "public".into(),
                        name: table.into(),
                    }),
                    row_type: row_type.clone(),
                    before: None,
                    key: vec![after[0].clone()],
                    after: Some(after),
                    key_type: key_type.clone(),
                }
            })
            .collect()
    }

    /// Applies `events` to `table` in one transaction, binary COPY allowed or not.
    async fn apply_snapshot(
        client: &mut Client,
        table: &str,
        events: &[Event],
        binary: bool,
    ) -> Applied {
        let mut tables = Tables::default();
        let name = TableName {
            schema: "public".into(),
            name: table.into(),
        };
        let dest = tables.get(client, &name, "target", Vsn(1)).await.unwrap();
        let tx = client.transaction().await.unwrap();
        let mut stage = 0;
        let applied = apply_table_with(
            &tx,
            &mut tables.statements,
            &dest,
            "target",
            events,
            &mut stage,
            binary,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        applied
    }

    /// Rows of `a` and `b` whose columns differ in value or in text form.
    async fn differing(client: &Client, a: &str, b: &str, columns: &[(&str, bool)]) -> Vec<i64> {
        let conds: Vec<String> = columns
            .iter()
            .map(|(c, comparable)| {
                let c = quote_ident(c);
                let text = format!("x.{c}::text IS DISTINCT FROM y.{c}::text");
                if *comparable {
                    format!("{text} OR x.{c} IS DISTINCT FROM y.{c}")
                } else {
                    text
                }
            })
            .collect();
        client
            .query(
                &format!(
                    "SELECT coalesce(x.id, y.id) FROM {a} x FULL JOIN {b} y ON x.id = y.id \
                     WHERE x.id IS NULL OR y.id IS NULL OR {} ORDER BY 1",
                    conds.join(" OR ")
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn database(prefix: &str) -> Client {
        let stack = ferry_testkit::Stack::get();
        let db = stack.target.create_database(prefix).await.unwrap();
        let client = stack.target.connect(&db).await.unwrap();
        client
            .batch_execute(&ferry_shared::value::session_settings_sql())
            .await
            .unwrap();
        client
    }

    #[tokio::test]
    async fn binary_copy_of_every_supported_type_stores_what_text_copy_stores() {
        let mut client = database("imp_binary").await;
        let src: Vec<String> = TYPED
            .iter()
            .map(|(c, t, _, _)| format!("{c} {t}"))
            .collect();
        let dst: Vec<String> = TYPED
            .iter()
            .map(|(c, _, t, _)| format!("{c} {t}"))
            .collect();
        let mut ddl = format!(
            "CREATE TABLE src (id bigint PRIMARY KEY, {});\
             CREATE TABLE bin (id bigint PRIMARY KEY, {d});\
             CREATE TABLE txt (id bigint PRIMARY KEY, {d});",
            src.join(", "),
            d = dst.join(", ")
        );
        for row in 0..5 {
            let values: Vec<String> = TYPED
                .iter()
                .map(|(_, t, _, v)| match row {
                    3 => "NULL".to_owned(),
                    4 => format!("({})::{t}", v[3]),
                    r => format!("({})::{t}", v[r]),
                })
                .collect();
            ddl.push_str(&format!(
                "INSERT INTO src VALUES ({row}, {});",
                values.join(", ")
            ));
        }
        client.batch_execute(&ddl).await.unwrap();

        let events = snapshot_events(&client, "bin").await;
        assert_eq!(events.len(), 5);
        let applied = apply_snapshot(&mut client, "bin", &events, true).await;
        assert_eq!(
            applied,
            Applied {
                binary_copy_rows: 5,
                text_copy_rows: 0,
                direct_copy_rows: 5,
            },
            "every row of ordinary types goes in with binary COPY, straight into the new table"
        );
        let events = snapshot_events(&client, "txt").await;
        let applied = apply_snapshot(&mut client, "txt", &events, false).await;
        assert_eq!(applied.text_copy_rows, 5);

        let columns: Vec<(&str, bool)> = TYPED
            .iter()
            .map(|(c, _, t, _)| (*c, *t != "json"))
            .collect();
        assert_eq!(
            differing(&client, "bin", "txt", &columns).await,
            Vec::<i64>::new()
        );
        // Where the types are the same, also equal to the source.
        let same: Vec<(&str, bool)> = TYPED
            .iter()
            .filter(|(_, s, d, _)| s == d)
            .map(|(c, _, t, _)| (*c, *t != "json"))
            .collect();
        assert_eq!(
            differing(&client, "bin", "src", &same).await,
            Vec::<i64>::new()
        );
        // Applying the same snapshot again (a redone snapshot) upserts through the
        // staging table and changes nothing.
        let events = snapshot_events(&client, "bin").await;
        let applied = apply_snapshot(&mut client, "bin", &events, true).await;
        assert_eq!((applied.binary_copy_rows, applied.direct_copy_rows), (5, 0));
        assert_eq!(
            differing(&client, "bin", "txt", &columns).await,
            Vec::<i64>::new()
        );
    }

    #[tokio::test]
    async fn values_without_an_exact_binary_form_send_their_run_through_text_copy() {
        let mut client = database("imp_binary_fallback").await;
        client
            .batch_execute(
                "CREATE TYPE mood AS ENUM ('sad', 'ok');\
                 CREATE DOMAIN posint AS integer CHECK (VALUE > 0);\
                 CREATE TABLE src (id bigint PRIMARY KEY, i integer, m mood, mo money, r int4range, \
                    iv interval, p posint, n numeric(10,2), ts timestamp, d date, a2 integer[]);\
                 CREATE TABLE dst (LIKE src INCLUDING ALL);\
                 CREATE TABLE plain (id bigint PRIMARY KEY, i integer, n numeric(10,2), ts timestamp, d date, a2 integer[]);\
                 INSERT INTO src VALUES \
                   (1, 1, 'ok', 12.5, '[1,5)', '1 day 02:00:00', 7, 'NaN', 'infinity', '-infinity', '{{1,2},{3,4}}'),\
                   (2, 2, 'sad', -0.01, 'empty', '-1 mons', 1, 1.25, '2024-01-01 00:00:00', '2024-01-01', '[0:1]={5,6}'),\
                   (3, 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
            )
            .await
            .unwrap();
        let events = snapshot_events(&client, "dst").await;
        let applied = apply_snapshot(&mut client, "dst", &events, true).await;
        assert_eq!(
            applied,
            Applied {
                binary_copy_rows: 0,
                text_copy_rows: 3,
                direct_copy_rows: 3
            }
        );
        let columns = [
            ("i", true),
            ("m", true),
            ("mo", true),
            ("r", true),
            ("iv", true),
            ("p", true),
            ("n", true),
            ("ts", true),
            ("d", true),
            ("a2", true),
        ];
        assert_eq!(
            differing(&client, "dst", "src", &columns).await,
            Vec::<i64>::new()
        );

        // Ordinary types, but values in the string branch (NaN, infinity, odd arrays).
        let mut events = snapshot_events(&client, "plain").await;
        let keep = [0usize, 1, 7, 8, 9, 10];
        for e in &mut events {
            let after = e.after.take().unwrap();
            e.after = Some(keep.iter().map(|&i| after[i].clone()).collect());
            e.row_type = Arc::new(RecordType {
                name: "r".into(),
                fields: keep.iter().map(|&i| e.row_type.fields[i].clone()).collect(),
            });
        }
        let applied = apply_snapshot(&mut client, "plain", &events, true).await;
        assert_eq!(applied.text_copy_rows, 3);
        let plain = [
            ("i", true),
            ("n", true),
            ("ts", true),
            ("d", true),
            ("a2", true),
        ];
        assert_eq!(
            differing(&client, "plain", "src", &plain).await,
            Vec::<i64>::new()
        );
    }

    #[test]
    fn copy_text_is_escaped() {
        let mut out = String::new();
        copy_escape("a\\b\tc\nd\re", &mut out);
        assert_eq!(out, "a\\\\b\\tc\\nd\\re");
    }

    #[tokio::test]
    async fn a_snapshot_batch_with_a_key_twice_keeps_the_row_read_last() {
        // An exporter that restarted mid-snapshot reads some rows again: one batch can
        // then carry a key twice. The straight COPY fails on it, and the batch goes
        // through the staging table with the last read of each key.
        let mut client = database("imp_snapshot_twice").await;
        client
            .batch_execute(
                "CREATE TABLE src (id bigint PRIMARY KEY, v text);\
                 CREATE TABLE dst (LIKE src INCLUDING ALL);\
                 INSERT INTO src VALUES (1, 'old'), (2, 'b'), (3, 'new');",
            )
            .await
            .unwrap();
        let mut events = snapshot_events(&client, "dst").await;
        // The third read is key 1 again, with the newer value.
        events[2].key = vec![Datum::Long(1)];
        if let Some(after) = events[2].after.as_mut() {
            after[0] = Datum::Long(1);
        }
        let applied = apply_snapshot(&mut client, "dst", &events, true).await;
        assert_eq!((applied.binary_copy_rows, applied.direct_copy_rows), (2, 0));
        let rows: Vec<(i64, String)> = client
            .query("SELECT id, v FROM dst ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(rows, vec![(1, "new".to_owned()), (2, "b".to_owned())]);
    }

    #[tokio::test]
    async fn a_connection_prepares_each_statement_once_and_starts_over_past_the_bound() {
        let client = database("imp_statements").await;
        // Statements prepared on this connection, as the server sees them.
        let prepared = || async {
            let rows = client
                .simple_query("SELECT count(*) FROM pg_prepared_statements")
                .await
                .unwrap();
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get(0).map(|v| v.parse::<usize>().unwrap())
                    }
                    _ => None,
                })
                .unwrap()
        };
        let mut statements = Statements::default();
        let a = statements.get(&client, "SELECT $1::int + 1").await.unwrap();
        let b = statements.get(&client, "SELECT $1::int + 1").await.unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(
            prepared().await,
            1,
            "the second use is the prepared statement"
        );
        let row = client.query_one(&b, &[&41i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        drop((a, b, row)); // a row holds its statement too
        for i in 1..Statements::MAX {
            statements
                .get(&client, &format!("SELECT {i}"))
                .await
                .unwrap();
        }
        assert_eq!(statements.len(), Statements::MAX);
        assert_eq!(prepared().await, Statements::MAX);
        statements.get(&client, "SELECT 'one more'").await.unwrap();
        assert_eq!(statements.len(), 1, "past the bound it starts over");
        assert_eq!(prepared().await, 1, "and closes what it forgot");
        let again = statements.get(&client, "SELECT $1::int + 1").await.unwrap();
        let row = client.query_one(&again, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2);
    }
}
