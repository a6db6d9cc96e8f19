//! `ferry verify`: compares two PostgreSQL-protocol databases table by table.
//!
//! # Checksum
//!
//! For each table both databases compute, inside themselves, the row count and an
//! order-independent checksum: the sum, as `numeric`, of the first 64 bits of the md5 of
//! each row's text, `ROW(c1, c2, ...)::text`, over the columns both sides have, in the
//! left table's column order (generated columns are left out, as the exporter leaves
//! them out). A sum, unlike XOR, does not let two equal rows cancel each other, and
//! `numeric` does not overflow. Text forms agree on both sides because every connection
//! applies [`session_settings_sql`]; the columns are expected to have the same types on
//! both sides (a type that differs is noted, because its text form may differ too).
//!
//! # Narrowing
//!
//! When a table with a primary key differs, its key space is split into ranges: the side
//! with more rows in the range gives up to [`FANOUT`] − 1 boundary keys (every n-th key
//! in key order), both sides compute count and checksum per sub-range, and only the
//! sub-ranges that differ are split again, depth first in key order, until a range holds
//! at most [`VerifyOptions::leaf_rows`] rows on either side. Then both sides list that
//! range's keys with the md5 of each row and the lists are compared, until
//! [`VerifyOptions::max_keys`] differing keys are found. Ranges are bounds on the key
//! columns compared as a row, `(k1, k2) >= (b1, b2)`, with collatable key columns
//! compared under `COLLATE "C"` so that both databases put a key into the same range
//! whatever their default collations are. Boundary keys travel as text and are cast to
//! each side's column type.
//!
//! # Consistency
//!
//! Each table is read in one `REPEATABLE READ READ ONLY` transaction per side, so the
//! counts, checksums and narrowing of one table see one snapshot of each database. The
//! two snapshots are not synchronized: compare databases whose writes are stopped (after
//! cutover, or with the application paused), or rows in flight show as differences.

use std::collections::{HashMap, HashSet};

use ferry_shared::catalog::{self, CatalogError, Column, TableName, TypeCatalog};
use ferry_shared::config::{ConnectError, DatabaseConfig, MigrationConfig};
use ferry_shared::value::session_settings_sql;
use serde::Serialize;

mod narrowing;
mod plan;
mod report;
mod side;
#[cfg(test)]
mod tests;

use narrowing::{Narrowing, NarrowingEnd};
use plan::{KeyRange, Plan};
use side::Side;

/// How many sub-ranges a differing key range is split into.
pub const FANOUT: u64 = 16;

/// At most this many key ranges are compared per table. Enough for max_keys keys spread
/// over a large table; it bounds the work when ranges can't isolate rows (a key type
/// that orders differently on the two sides).
const MAX_RANGES: usize = 20_000;

/// How [`verify`] works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// At most this many differing keys are listed per table; beyond it the listing
    /// stops and [`TableResult::keys_truncated`] is set. Default 100.
    pub max_keys: usize,
    /// A differing key range is compared key by key once it holds at most this many
    /// rows on either side (at least 1). Default 1000.
    pub leaf_rows: u64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            max_keys: 100,
            leaf_rows: 1000,
        }
    }
}

/// The outcome of comparing two databases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Name of the left database, e.g. `source`.
    pub left: String,
    /// Name of the right database, e.g. `target`.
    pub right: String,
    /// One result per table, in the order the tables were given.
    pub tables: Vec<TableResult>,
}

/// The outcome for one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableResult {
    /// `schema.table`.
    pub table: String,
    /// Equal, different, or missing on a side.
    pub status: TableStatus,
    /// True when `status` is [`TableStatus::Equal`].
    pub equal: bool,
    /// Rows on the left (`None`: the table is missing there).
    pub left_rows: Option<u64>,
    /// Rows on the right (`None`: the table is missing there).
    pub right_rows: Option<u64>,
    /// The left checksum (sum of 64-bit row hashes, as decimal text).
    pub left_checksum: Option<String>,
    /// The right checksum.
    pub right_checksum: Option<String>,
    /// Keys whose rows differ, in key order within each compared range, at most
    /// [`VerifyOptions::max_keys`].
    pub differing_keys: Vec<DifferingKey>,
    /// True when more keys differ than are listed.
    pub keys_truncated: bool,
    /// Facts a person needs to read the result: columns on one side only, types that
    /// differ, why keys could not be listed.
    pub notes: Vec<String>,
}

/// How a table compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    /// Same columns, same row count, same checksum.
    Equal,
    /// Present on both sides, but rows or columns differ.
    Different,
    /// The table does not exist on the left.
    MissingOnLeft,
    /// The table does not exist on the right.
    MissingOnRight,
    /// The table exists on neither side.
    MissingOnBoth,
}

/// One key whose row differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DifferingKey {
    /// The key as PostgreSQL writes it in messages: `(id)=(42)`, `(region, id)=(eu, 7)`.
    pub key: String,
    /// How the row differs.
    pub difference: KeyDifference,
}

/// How the row of one key differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyDifference {
    /// Only the right has the row.
    MissingOnLeft,
    /// Only the left has the row.
    MissingOnRight,
    /// Both have the row, with different values.
    Different,
}

/// Why the databases could not be compared. A table missing on one side is not an
/// error but a [`TableStatus`].
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A database could not be reached.
    #[error("cannot verify: the {name} database can't be reached; check the [{name}] settings and that the server is up")]
    Connect {
        /// The database's role name, e.g. `target`.
        name: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// A statement failed outside any one table (session settings, the catalog).
    #[error("cannot verify: {what} on the {name} database ({database}) failed")]
    Session {
        /// What was done.
        what: String,
        /// The database's role name.
        name: String,
        /// `user@host:port/db`.
        database: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The catalog could not be read.
    #[error("cannot verify: reading the catalog of the {name} database ({database}) failed; check that the user may read pg_catalog")]
    Catalog {
        /// The database's role name.
        name: String,
        /// `user@host:port/db`.
        database: String,
        /// The catalog error.
        #[source]
        source: CatalogError,
    },
    /// Reading a table failed.
    #[error("cannot verify table {table} on the {name} database ({database}); check that the user may read the table")]
    Query {
        /// `schema.table`.
        table: String,
        /// The database's role name.
        name: String,
        /// `user@host:port/db`.
        database: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A table filter matches none of the tables the migration selects.
    #[error("no table selected by the migration matches \"{pattern}\"; name tables as schema.table or table (with * wildcards) among those migration.include_tables and exclude_tables select")]
    NoMatch {
        /// The filter.
        pattern: String,
    },
}

/// The tables `verify` compares for a migration: the tables of `left`'s schemas that the
/// migration selects (as the exporter selects them: [`catalog::list_tables`] and
/// [`MigrationConfig::selects`]), narrowed to those matching `only` (same pattern
/// syntax as `include_tables`) when it is not empty. Every pattern of `only` must match
/// a selected table.
pub async fn tables_to_verify(
    left: &DatabaseConfig,
    left_name: &str,
    migration: &MigrationConfig,
    only: &[String],
) -> Result<Vec<TableName>, VerifyError> {
    let side = Side::open(left, left_name).await?;
    let listed = catalog::list_tables(&side.client, &left.schemas).await;
    side.close().await;
    let selected: Vec<TableName> = listed
        .map_err(|source| VerifyError::Catalog {
            name: left_name.to_owned(),
            database: left.display(),
            source,
        })?
        .into_iter()
        .filter(|t| migration.selects(&t.schema, &t.name))
        .collect();
    if only.is_empty() {
        return Ok(selected);
    }
    // The same pattern semantics as include_tables, by asking a migration config whose
    // include list is the filter.
    let filter_of = |pattern: &String| MigrationConfig {
        include_tables: vec![pattern.clone()],
        exclude_tables: Vec::new(),
        ..migration.clone()
    };
    for pattern in only {
        let filter = filter_of(pattern);
        if !selected.iter().any(|t| filter.selects(&t.schema, &t.name)) {
            return Err(VerifyError::NoMatch {
                pattern: pattern.clone(),
            });
        }
    }
    let filter = MigrationConfig {
        include_tables: only.to_vec(),
        exclude_tables: Vec::new(),
        ..migration.clone()
    };
    Ok(selected
        .into_iter()
        .filter(|t| filter.selects(&t.schema, &t.name))
        .collect())
}

/// Compares `tables` between the `left` and `right` databases (named `left_name` and
/// `right_name` in the report and in errors, e.g. `source` and `target`).
///
/// Tables are compared one after the other; each side's queries of a table run
/// concurrently with the other side's. A table missing on a side is reported as such;
/// any other failure stops the comparison with an error naming the table and database.
pub async fn verify(
    left: &DatabaseConfig,
    left_name: &str,
    right: &DatabaseConfig,
    right_name: &str,
    tables: &[TableName],
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let (left_side, right_side) =
        tokio::try_join!(Side::open(left, left_name), Side::open(right, right_name))?;
    let result = verify_tables(&left_side, &right_side, tables, opts).await;
    tokio::join!(left_side.close(), right_side.close());
    Ok(VerifyReport {
        left: left_name.to_owned(),
        right: right_name.to_owned(),
        tables: result?,
    })
}

async fn verify_tables(
    left: &Side,
    right: &Side,
    tables: &[TableName],
    opts: &VerifyOptions,
) -> Result<Vec<TableResult>, VerifyError> {
    let (left_types, right_types) = tokio::try_join!(left.types(), right.types())?;
    let mut results = Vec::with_capacity(tables.len());
    for (n, table) in tables.iter().enumerate() {
        tracing::info!(table = %table, "verifying table {} of {}", n + 1, tables.len());
        tokio::try_join!(left.begin(table), right.begin(table))?;
        let result = verify_table(left, &left_types, right, &right_types, table, opts).await?;
        tokio::try_join!(left.commit(table), right.commit(table))?;
        tracing::info!(
            table = %table,
            status = ?result.status,
            left_rows = ?result.left_rows,
            right_rows = ?result.right_rows,
            differing_keys = result.differing_keys.len(),
            "verified"
        );
        results.push(result);
    }
    Ok(results)
}

async fn verify_table(
    left: &Side,
    left_types: &TypeCatalog,
    right: &Side,
    right_types: &TypeCatalog,
    table: &TableName,
    opts: &VerifyOptions,
) -> Result<TableResult, VerifyError> {
    let (left_schema, right_schema) = tokio::try_join!(
        left.inspect(left_types, table),
        right.inspect(right_types, table)
    )?;
    let mut result = TableResult {
        table: table.to_string(),
        status: TableStatus::Equal,
        equal: false,
        left_rows: None,
        right_rows: None,
        left_checksum: None,
        right_checksum: None,
        differing_keys: Vec::new(),
        keys_truncated: false,
        notes: Vec::new(),
    };
    let ((left_schema, left_unsupported), (right_schema, right_unsupported)) =
        match (left_schema, right_schema) {
            (Some(l), Some(r)) => (l, r),
            (l, r) => {
                result.status = match (&l, &r) {
                    (None, None) => TableStatus::MissingOnBoth,
                    (None, _) => TableStatus::MissingOnLeft,
                    _ => TableStatus::MissingOnRight,
                };
                // Count what is there, so the report says how much is missing.
                if let Some((schema, _)) = &l {
                    let columns: Vec<&Column> = schema.columns.iter().collect();
                    let plan = Plan::new(schema, &columns, &[], &HashSet::new());
                    let sums = left.checksum(table, &plan, &KeyRange::ALL).await?;
                    result.left_rows = Some(sums.rows);
                    result.left_checksum = Some(sums.sum);
                }
                if let Some((schema, _)) = &r {
                    let columns: Vec<&Column> = schema.columns.iter().collect();
                    let plan = Plan::new(schema, &columns, &[], &HashSet::new());
                    let sums = right.checksum(table, &plan, &KeyRange::ALL).await?;
                    result.right_rows = Some(sums.rows);
                    result.right_checksum = Some(sums.sum);
                }
                return Ok(result);
            }
        };

    // Columns: those of both sides, in the left table's order.
    let right_columns: HashMap<&str, &Column> = right_schema
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let left_names: HashSet<&str> = left_schema
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let mut columns_differ = false;
    let mut common: Vec<(&Column, &Column)> = Vec::new();
    for column in &left_schema.columns {
        match right_columns.get(column.name.as_str()) {
            Some(other) => {
                if column.type_name != other.type_name {
                    result.notes.push(format!(
                        "column {} has type {} on {} and {} on {}; values are compared by their text form",
                        column.name, column.type_name, left.name, other.type_name, right.name
                    ));
                }
                common.push((column, other));
            }
            None => {
                columns_differ = true;
                result
                    .notes
                    .push(format!("column {} is only on {}", column.name, left.name));
            }
        }
    }
    for column in &right_schema.columns {
        if !left_names.contains(column.name.as_str()) {
            columns_differ = true;
            result
                .notes
                .push(format!("column {} is only on {}", column.name, right.name));
        }
    }
    for (side, unsupported) in [(left, &left_unsupported), (right, &right_unsupported)] {
        for column in unsupported {
            result.notes.push(format!(
                "column {} (type {}) on {} is not compared: Ferry does not move its type",
                column.column, column.type_name, side.name
            ));
        }
    }

    // The key: the left primary key, if all its columns are on both sides.
    let key_names: Vec<&str> = left_schema.key_columns().map(|c| c.name.as_str()).collect();
    let key_usable = !key_names.is_empty()
        && key_names
            .iter()
            .all(|k| common.iter().any(|(c, _)| c.name == *k));
    if key_names.is_empty() {
        result.notes.push(format!(
            "table has no primary key on {}: differing rows can't be listed by key",
            left.name
        ));
    } else if !key_usable {
        result.notes.push(format!(
            "the primary key of {} is not on {}: differing rows can't be listed by key",
            left.name, right.name
        ));
    }
    let key_names: Vec<&str> = if key_usable { key_names } else { Vec::new() };

    let left_cols: Vec<&Column> = common.iter().map(|(l, _)| *l).collect();
    let right_cols: Vec<&Column> = common.iter().map(|(_, r)| *r).collect();
    let (left_collatable, right_collatable) = if key_names.is_empty() {
        (HashSet::new(), HashSet::new())
    } else {
        tokio::try_join!(
            left.collatable_columns(&left_schema),
            right.collatable_columns(&right_schema)
        )?
    };
    let left_plan = Plan::new(&left_schema, &left_cols, &key_names, &left_collatable);
    let right_plan = Plan::new(&right_schema, &right_cols, &key_names, &right_collatable);

    let (left_sums, right_sums) = tokio::try_join!(
        left.checksum(table, &left_plan, &KeyRange::ALL),
        right.checksum(table, &right_plan, &KeyRange::ALL)
    )?;
    result.left_rows = Some(left_sums.rows);
    result.right_rows = Some(right_sums.rows);
    result.left_checksum = Some(left_sums.sum.clone());
    result.right_checksum = Some(right_sums.sum.clone());
    let rows_differ = left_sums != right_sums;
    if rows_differ && !key_names.is_empty() {
        let narrowing = Narrowing {
            table,
            left,
            right,
            left_plan: &left_plan,
            right_plan: &right_plan,
            opts,
        };
        let (keys, end) = narrowing.run(left_sums, right_sums).await?;
        result.differing_keys = keys;
        result.keys_truncated = end != NarrowingEnd::Complete;
        if end == NarrowingEnd::RangeBudget {
            result.notes.push(format!(
                "the search for differing keys stopped after comparing {MAX_RANGES} key ranges; \
                 check that the key columns have the same types on {} and {}",
                left.name, right.name
            ));
        }
    }
    result.status = if rows_differ || columns_differ {
        TableStatus::Different
    } else {
        TableStatus::Equal
    };
    result.equal = result.status == TableStatus::Equal;
    Ok(result)
}
