//! One batch in ONE destination transaction (DESIGN.md §4): every table's rows, the
//! partitions' new positions (compare-and-set, [`super::positions::advance`]) and the
//! per-table counts ([`super::positions::add_counts`]).
//!
//! Idempotency (DESIGN.md §4): snapshot rows, inserts and updates are upserts carrying
//! the full new image (`INSERT .. ON CONFLICT (pk) DO UPDATE SET` every column); deletes
//! tolerate a missing row. Replaying any prefix of a stream therefore converges.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferry_shared::catalog::TableName;
use ferry_shared::envelope::Op;
use ferry_shared::position::Vsn;
use tokio_postgres::{Client, Transaction};

use super::catalog::{quoted_name, DestTable, Tables};
use super::copy::{copy_direct, copy_payload};
use super::positions::{self, db_failure};
use super::prepared::Statements;
use super::rows::{collapse, runs, Mapper, RowOp};
use super::statements::{column_list, execute_run};
use ferry_shared::error_policy::describe_pg;

use crate::error::Failure;
use crate::event::{count, Event};
use crate::sink::{Applied, Move, Written};

/// Writes one batch in ONE destination transaction (DESIGN.md §4): every table's events
/// (sorted by VSN here), the partitions' new positions — each moved by compare-and-set
/// from the stored next offset it was read at ([`positions::advance`]) — and the
/// per-table counts. Counts are added last, in table-name order, so that concurrent
/// appliers lock `ferry_metadata.table_counts` rows in one order (no deadlock).
/// Returns the counts per table and how the snapshot rows went in.
pub(super) async fn commit_batch(
    client: &mut Client,
    tables: &mut Tables,
    group: &str,
    events: &mut BTreeMap<TableName, Vec<Event>>,
    positions: &mut [Move<'_>],
) -> Result<Written, Failure> {
    let mut dest = BTreeMap::new();
    for (name, evs) in events.iter_mut() {
        evs.sort_by_key(|e| e.vsn);
        let first = evs.first().map(|e| e.vsn).unwrap_or_default();
        dest.insert(name.clone(), tables.get(client, name, first).await?);
    }
    positions.sort_by(|a, b| (&a.1.topic, a.1.partition).cmp(&(&b.1.topic, b.1.partition)));
    // A batch that finds snapshot rows of a table present already (first seen in this
    // session) rolls back, and goes again through that table's staging table, created
    // now, outside the transaction. Each such attempt stages at least one more table of
    // the batch, so there are at most as many as the batch has tables.
    let mut attempt = 0;
    loop {
        attempt += 1;
        ensure_stages(client, &dest).await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_failure("starting a transaction", &e))?;
        match write_batch(&tx, tables, group, events, &dest, positions).await {
            Err(_) if attempt <= dest.len() && dest.values().any(|t| t.needs_stage()) => {
                // Dropping `tx` rolls it back.
                continue;
            }
            Err(e) => return Err(e),
            Ok(written) => {
                tx.commit()
                    .await
                    .map_err(|e| db_failure("committing a batch", &e))?;
                return Ok(written);
            }
        }
    }
}

/// Creates the staging tables the batch's tables need, outside any transaction.
async fn ensure_stages(
    client: &Client,
    dest: &BTreeMap<TableName, Arc<DestTable>>,
) -> Result<(), Failure> {
    for t in dest.values() {
        if t.staged.load(Ordering::Relaxed) {
            t.ensure_stage(client).await?;
        }
    }
    Ok(())
}

/// The batch's statements inside `tx`: positions, every table's events, counts.
async fn write_batch(
    tx: &Transaction<'_>,
    tables: &mut Tables,
    group: &str,
    events: &BTreeMap<TableName, Vec<Event>>,
    dest: &BTreeMap<TableName, Arc<DestTable>>,
    positions: &[Move<'_>],
) -> Result<Written, Failure> {
    let mut counts = BTreeMap::new();
    let mut applied = Applied::default();
    for (expected, new) in positions.iter() {
        positions::advance(tx, &mut tables.statements, group, *expected, new).await?;
    }
    for (name, evs) in events.iter() {
        if let Some(t) = dest.get(name) {
            let a = apply_table(tx, &mut tables.statements, t, evs).await?;
            applied.binary_copy_rows += a.binary_copy_rows;
            applied.text_copy_rows += a.text_copy_rows;
            applied.direct_copy_rows += a.direct_copy_rows;
        }
        counts.insert(name.clone(), count(evs));
    }
    for (name, c) in &counts {
        positions::add_counts(
            tx,
            &mut tables.statements,
            group,
            &name.schema,
            &name.name,
            c,
        )
        .await?;
    }
    Ok((counts, applied))
}

/// Applies one table's `events` in a transaction of their own, as a batch does
/// (staging table created outside it when needed), binary `COPY` allowed or not; for
/// tests that compare both.
#[cfg(test)]
pub(super) async fn apply_alone(
    client: &mut Client,
    table: &Arc<DestTable>,
    statements: &mut Statements,
    events: &[Event],
    binary_copy: bool,
) -> Result<Applied, Failure> {
    for attempt in 1..=2 {
        if table.staged.load(Ordering::Relaxed) {
            table.ensure_stage(client).await?;
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_failure("starting a transaction", &e))?;
        match apply_table_with(&tx, statements, table, events, binary_copy).await {
            Err(_) if attempt == 1 && table.needs_stage() => continue,
            Err(e) => return Err(e),
            Ok(applied) => {
                tx.commit()
                    .await
                    .map_err(|e| db_failure("committing a batch", &e))?;
                return Ok(applied);
            }
        }
    }
    Err(Failure::Transient("a staged batch did not apply".into()))
}

/// Applies `events` (all of `table`, in VSN order) inside `tx`.
pub(super) async fn apply_table(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    events: &[Event],
) -> Result<Applied, Failure> {
    apply_table_with(tx, statements, table, events, true).await
}

/// [`apply_table`], with binary `COPY` allowed or not (tests compare both).
pub(super) async fn apply_table_with(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    events: &[Event],
    binary_copy: bool,
) -> Result<Applied, Failure> {
    if let Some(applied) = copy_snapshot_batch(tx, statements, table, events, binary_copy).await? {
        return Ok(applied);
    }
    let mut mapper = Mapper::new(table);
    let mut ops = Vec::with_capacity(events.len());
    for e in events {
        mapper.map(e, &mut ops)?;
    }
    if !table.exact_order {
        ops = collapse(ops);
    }
    let mut applied = Applied::default();
    for run in runs(ops) {
        execute_run(tx, statements, table, &run, binary_copy, &mut applied).await?;
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
    let mut mapper = Mapper::new(table);
    let (cols, _) = mapper.layout(&first.row_type, first.vsn)?;
    let rows = events.iter().filter_map(|e| e.after.as_deref());
    let payload = copy_payload(table, &cols, rows, events.len(), binary_copy);
    let last = events.last().map_or(first.vsn, |e| e.vsn);
    let copied = copy_direct(tx, statements, table, &column_list(&cols), &payload)
        .await
        .map_err(|e| vsn_failure(&e, table, first.vsn, last))?;
    if !copied {
        return Ok(None);
    }
    let mut applied = Applied::default();
    payload.count(&mut applied, events.len());
    applied.direct_copy_rows = events.len();
    Ok(Some(applied))
}

/// A failure writing the run `run` of `table`.
pub(super) fn run_failure(
    e: &tokio_postgres::Error,
    table: &DestTable,
    run: &[(Vsn, RowOp<'_>)],
) -> Failure {
    let first = run.first().map(|r| r.0).unwrap_or_default();
    let last = run.last().map(|r| r.0).unwrap_or_default();
    vsn_failure(e, table, first, last)
}

/// A failure writing the events `first..=last` of `table`.
fn vsn_failure(e: &tokio_postgres::Error, table: &DestTable, first: Vsn, last: Vsn) -> Failure {
    let vsns = if first == last {
        format!("event vsn {first}")
    } else {
        format!("events vsn {first}..{last}")
    };
    let text = format!(
        "table {} on the {}: {} ({vsns})",
        quoted_name(&table.name),
        table.destination,
        describe_pg(e)
    );
    Failure::pg_rows(text, e)
}
