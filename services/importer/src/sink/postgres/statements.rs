//! The statements that write a run of row operations ([`super::rows::runs`]) to a
//! destination table: `unnest` deletes and upserts for changes, and for snapshot rows a
//! `COPY` straight into the table or into a temporary staging table and one
//! `INSERT .. SELECT` ([`super::copy`]).
//!
//! Values go in as text (`format_text`) and are cast to the destination column's type
//! (`::<format_type>`), which runs the type's input function: exact for every type Ferry
//! moves (see the type round-trip test). Upserts are `INSERT .. ON CONFLICT (pk) DO
//! UPDATE SET` every column the event carries ([`conflict_clause`]).

use std::sync::atomic::Ordering;

use ferry_shared::catalog::quote_ident;
use ferry_shared::position::Vsn;
use ferry_shared::value::format_text;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use super::batch::run_failure;
use super::catalog::DestTable;
use super::copy::{copy_direct, copy_in, copy_payload};
use super::prepared::Statements;
use super::rows::RowOp;
use crate::error::Failure;
use crate::sink::Applied;

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

/// Writes one run (operations of one kind and column list, distinct keys) to `table`
/// inside `tx`; snapshot rows go in with binary `COPY` when `binary_copy` allows and
/// every value has an exact binary form.
pub(super) async fn execute_run(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    run: &[(Vsn, RowOp<'_>)],
    binary_copy: bool,
    applied: &mut Applied,
) -> Result<(), Failure> {
    let Some((_, first)) = run.first() else {
        return Ok(());
    };
    let fail = |e: tokio_postgres::Error| run_failure(&e, table, run);
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
            if !table.stage_ready.load(Ordering::Relaxed) {
                // No DDL inside the batch's transaction: the caller rolls back, creates
                // the staging table and applies the batch again.
                return Err(Failure::Transient(format!(
                    "snapshot rows of table {} are on the {} already; the batch is applied again through a staging table",
                    table.name, table.destination
                )));
            }
            let (format, payload) = (payload.format, payload.data);
            let stage = &table.stage;
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
                "INSERT INTO {} ({list}) {}SELECT {list} FROM {stage} {}; DELETE FROM {stage}",
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
pub(super) fn column_list(cols: &[String]) -> String {
    let target: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
    target.join(", ")
}
