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
use std::fmt::Write as _;

use ferry_shared::catalog::{
    self, quote_ident, CatalogError, Column, TableName, TableSchema, TypeCatalog,
};
use ferry_shared::config::{ConnectError, DatabaseConfig, MigrationConfig};
use ferry_shared::value::session_settings_sql;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

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

/// The SQL pieces for one table on one side.
struct Plan {
    /// `"schema"."table"`.
    qualified: String,
    /// The per-row hash: a signed 64-bit integer from the row text's md5.
    row_hash: String,
    /// The row text's md5 (for listing rows of a small range).
    row_md5: String,
    /// Key column names, in key order.
    key_names: Vec<String>,
    /// Key column expressions for ordering and comparing (with `COLLATE "C"` where the
    /// column is collatable).
    key_exprs: Vec<String>,
    /// Per key column, its type and collation clause: a bound's text parameter becomes
    /// `($n::text::<type>)<collation>`, comparable with `key_exprs`.
    key_casts: Vec<(String, &'static str)>,
}

impl Plan {
    fn new(
        table: &TableSchema,
        columns: &[&Column],
        key_names: &[&str],
        collatable: &HashSet<String>,
    ) -> Plan {
        let row_text = format!(
            "ROW({})::text",
            columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut key_exprs = Vec::new();
        let mut key_casts = Vec::new();
        for name in key_names {
            let type_name = table
                .columns
                .iter()
                .find(|c| c.name == *name)
                .map_or("text", |c| c.type_name.as_str());
            let collate = if collatable.contains(*name) {
                " COLLATE \"C\""
            } else {
                ""
            };
            key_exprs.push(format!("{}{collate}", quote_ident(name)));
            key_casts.push((type_name.to_owned(), collate));
        }
        Plan {
            qualified: table.qualified(),
            row_hash: format!("('x' || substr(md5({row_text}), 1, 16))::bit(64)::bigint"),
            row_md5: format!("md5({row_text})"),
            key_names: key_names.iter().map(|k| (*k).to_owned()).collect(),
            key_exprs,
            key_casts,
        }
    }

    /// `WHERE` condition of `range` with parameters from `$1`, and the parameters.
    fn condition<'r>(&self, range: &'r KeyRange) -> (String, Vec<&'r String>) {
        let mut parts = Vec::new();
        let mut params: Vec<&String> = Vec::new();
        for (bound, op) in [(&range.lower, ">="), (&range.upper, "<")] {
            if let Some(values) = bound {
                let casts: Vec<String> = self
                    .key_casts
                    .iter()
                    .zip(values)
                    .map(|((type_name, collate), value)| {
                        params.push(value);
                        format!("(${}::text::{type_name}){collate}", params.len())
                    })
                    .collect();
                parts.push(format!(
                    "({}) {op} ({})",
                    self.key_exprs.join(", "),
                    casts.join(", ")
                ));
            }
        }
        if parts.is_empty() {
            ("true".to_owned(), params)
        } else {
            (parts.join(" AND "), params)
        }
    }

    fn key_order(&self) -> String {
        self.key_exprs.join(", ")
    }

    fn key_texts(&self) -> String {
        self.key_names
            .iter()
            .enumerate()
            // Aliased: an output column named like the key column would make `ORDER BY
            // "id"` sort by the text.
            .map(|(i, k)| format!("{}::text AS ferry_k{i}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A key range: `lower <= key < upper`, each bound absent for an open end. Bounds are
/// key values as text, in key column order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyRange {
    lower: Option<Vec<String>>,
    upper: Option<Vec<String>>,
}

impl KeyRange {
    const ALL: KeyRange = KeyRange {
        lower: None,
        upper: None,
    };
}

/// Row count and checksum of a table or key range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    rows: u64,
    sum: String,
}

/// One row of a small range: its key values as text and the md5 of its text.
type KeyedRow = (Vec<String>, String);

/// One open database, named for messages.
struct Side {
    name: String,
    database: String,
    client: Client,
    connection: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Side {
    async fn open(config: &DatabaseConfig, name: &str) -> Result<Side, VerifyError> {
        let (client, connection) =
            config
                .connect()
                .await
                .map_err(|source| VerifyError::Connect {
                    name: name.to_owned(),
                    source,
                })?;
        let side = Side {
            name: name.to_owned(),
            database: config.display(),
            client,
            connection,
        };
        if let Err(source) = side.client.batch_execute(&session_settings_sql()).await {
            let error = side.session_error("applying the session settings", source);
            side.close().await;
            return Err(error);
        }
        Ok(side)
    }

    /// Ends the session and joins its connection task.
    async fn close(self) {
        drop(self.client);
        match self.connection.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(database = %self.database, error = %e, "connection ended with an error")
            }
            Err(e) => {
                tracing::debug!(database = %self.database, error = %e, "connection task failed")
            }
        }
    }

    fn session_error(&self, what: &str, source: tokio_postgres::Error) -> VerifyError {
        VerifyError::Session {
            what: what.to_owned(),
            name: self.name.clone(),
            database: self.database.clone(),
            source,
        }
    }

    fn query_error(&self, table: &TableName, source: tokio_postgres::Error) -> VerifyError {
        VerifyError::Query {
            table: table.to_string(),
            name: self.name.clone(),
            database: self.database.clone(),
            source,
        }
    }

    fn catalog_error(&self, source: CatalogError) -> VerifyError {
        VerifyError::Catalog {
            name: self.name.clone(),
            database: self.database.clone(),
            source,
        }
    }

    async fn types(&self) -> Result<TypeCatalog, VerifyError> {
        TypeCatalog::load(&self.client)
            .await
            .map_err(|e| self.catalog_error(e))
    }

    async fn begin(&self, table: &TableName) -> Result<(), VerifyError> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|e| self.query_error(table, e))
    }

    async fn commit(&self, table: &TableName) -> Result<(), VerifyError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| self.query_error(table, e))
    }

    /// The table's columns and the columns Ferry can't move, or `None` if it does not
    /// exist.
    async fn inspect(
        &self,
        types: &TypeCatalog,
        table: &TableName,
    ) -> Result<Option<(TableSchema, Vec<catalog::UnsupportedColumn>)>, VerifyError> {
        match catalog::inspect_table(&self.client, types, table).await {
            Ok(found) => Ok(Some(found)),
            Err(CatalogError::NoSuchTable(_)) => Ok(None),
            Err(e) => Err(self.catalog_error(e)),
        }
    }

    /// Names of the table's collatable columns.
    async fn collatable_columns(
        &self,
        table: &TableSchema,
    ) -> Result<HashSet<String>, VerifyError> {
        let name = TableName {
            schema: table.schema.clone(),
            name: table.name.clone(),
        };
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
                   AND NOT a.attisdropped AND a.attcollation <> 0",
                &[&table.qualified()],
            )
            .await
            .map_err(|e| self.query_error(&name, e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    async fn checksum(
        &self,
        table: &TableName,
        plan: &Plan,
        range: &KeyRange,
    ) -> Result<Sums, VerifyError> {
        let (condition, params) = plan.condition(range);
        let sql = format!(
            "SELECT count(*), coalesce(sum(h), 0)::text \
             FROM (SELECT {} AS h FROM {} WHERE {condition}) s",
            plan.row_hash, plan.qualified
        );
        let row = self
            .client
            .query_one(&sql, &as_params(&params))
            .await
            .map_err(|e| self.query_error(table, e))?;
        let rows: i64 = row.get(0);
        Ok(Sums {
            rows: u64::try_from(rows).unwrap_or(0),
            sum: row.get(1),
        })
    }

    /// Every `step`-th key of `range` in key order, after the first: the lower bounds
    /// of the sub-ranges after the first one.
    async fn boundaries(
        &self,
        table: &TableName,
        plan: &Plan,
        range: &KeyRange,
        step: u64,
    ) -> Result<Vec<Vec<String>>, VerifyError> {
        let (condition, params) = plan.condition(range);
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let n = params.len() + 1;
        let keys = plan.key_texts();
        let sql = format!(
            "SELECT * FROM (SELECT {keys}, row_number() OVER (ORDER BY {}) AS ferry_rn \
                            FROM {} WHERE {condition}) s \
             WHERE ferry_rn > 1 AND (ferry_rn - 1) % ${n} = 0 ORDER BY ferry_rn",
            plan.key_order(),
            plan.qualified
        );
        let mut values = as_params(&params);
        values.push(&step);
        let rows = self
            .client
            .query(&sql, &values)
            .await
            .map_err(|e| self.query_error(table, e))?;
        let width = plan.key_names.len();
        Ok(rows
            .iter()
            .map(|row| (0..width).map(|i| key_text(row.get(i))).collect())
            .collect())
    }

    /// The keys and row md5s of `range`, in key order.
    async fn rows(
        &self,
        table: &TableName,
        plan: &Plan,
        range: &KeyRange,
    ) -> Result<Vec<KeyedRow>, VerifyError> {
        let (condition, params) = plan.condition(range);
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {condition} ORDER BY {}",
            plan.key_texts(),
            plan.row_md5,
            plan.qualified,
            plan.key_order()
        );
        let rows = self
            .client
            .query(&sql, &as_params(&params))
            .await
            .map_err(|e| self.query_error(table, e))?;
        let width = plan.key_names.len();
        Ok(rows
            .iter()
            .map(|row| {
                let key = (0..width).map(|i| key_text(row.get(i))).collect();
                (key, row.get::<_, Option<String>>(width).unwrap_or_default())
            })
            .collect())
    }
}

fn as_params<'a>(params: &'a [&'a String]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| *p as &(dyn ToSql + Sync)).collect()
}

/// Key columns are NOT NULL; `NULL` only in case a key column is not the primary key's
/// on the other side.
fn key_text(value: Option<String>) -> String {
    value.unwrap_or_else(|| "NULL".to_owned())
}

/// How a narrowing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NarrowingEnd {
    /// Every differing key is listed.
    Complete,
    /// More keys differ than `max_keys`.
    KeyLimit,
    /// [`MAX_RANGES`] ranges were compared before the search ended.
    RangeBudget,
}

/// The narrowing of one differing table to keys.
struct Narrowing<'a> {
    table: &'a TableName,
    left: &'a Side,
    right: &'a Side,
    left_plan: &'a Plan,
    right_plan: &'a Plan,
    opts: &'a VerifyOptions,
}

impl Narrowing<'_> {
    /// Differing keys in key order, and how the search ended.
    async fn run(
        &self,
        left_sums: Sums,
        right_sums: Sums,
    ) -> Result<(Vec<DifferingKey>, NarrowingEnd), VerifyError> {
        let mut ranges = 0;
        let leaf_rows = self.opts.leaf_rows.max(1);
        let mut keys = Vec::new();
        // Depth first, in key order: children are pushed last first.
        let mut pending = vec![(KeyRange::ALL, left_sums.rows, right_sums.rows)];
        while let Some((range, left_rows, right_rows)) = pending.pop() {
            if left_rows.max(right_rows) <= leaf_rows {
                let (left_list, right_list) = tokio::try_join!(
                    self.left.rows(self.table, self.left_plan, &range),
                    self.right.rows(self.table, self.right_plan, &range)
                )?;
                for difference in diff_rows(&self.left_plan.key_names, left_list, right_list) {
                    if keys.len() >= self.opts.max_keys {
                        return Ok((keys, NarrowingEnd::KeyLimit));
                    }
                    keys.push(difference);
                }
                continue;
            }
            // Split by the side with more rows here: its sub-ranges get fewer rows each.
            let (side, plan, rows) = if left_rows >= right_rows {
                (self.left, self.left_plan, left_rows)
            } else {
                (self.right, self.right_plan, right_rows)
            };
            let step = rows.div_ceil(FANOUT);
            let bounds = side.boundaries(self.table, plan, &range, step).await?;
            let mut children = Vec::with_capacity(bounds.len() + 1);
            let mut lower = range.lower.clone();
            for bound in bounds {
                children.push(KeyRange {
                    lower,
                    upper: Some(bound.clone()),
                });
                lower = Some(bound);
            }
            children.push(KeyRange {
                lower,
                upper: range.upper.clone(),
            });
            let mut differing = Vec::new();
            for child in children {
                ranges += 1;
                if ranges > MAX_RANGES {
                    return Ok((keys, NarrowingEnd::RangeBudget));
                }
                let (l, r) = tokio::try_join!(
                    self.left.checksum(self.table, self.left_plan, &child),
                    self.right.checksum(self.table, self.right_plan, &child)
                )?;
                if l != r {
                    differing.push((child, l.rows, r.rows));
                }
            }
            pending.extend(differing.into_iter().rev());
        }
        Ok((keys, NarrowingEnd::Complete))
    }
}

/// Compares two key-ordered row lists of the same range. Both lists are in the same
/// order, so a merge walk finds each difference; a key is known to be on the other side
/// through a set, since key texts don't sort like the keys.
fn diff_rows(key_names: &[String], left: Vec<KeyedRow>, right: Vec<KeyedRow>) -> Vec<DifferingKey> {
    let right_keys: HashSet<Vec<String>> = right.iter().map(|(k, _)| k.clone()).collect();
    let mut out = Vec::new();
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (Some((lk, lh)), Some((rk, rh))) => {
                if lk == rk {
                    if lh != rh {
                        out.push(differing(key_names, lk, KeyDifference::Different));
                    }
                    left.next();
                    right.next();
                } else if right_keys.contains(lk) {
                    // The left key comes later on the right: the right's head is not on
                    // the left.
                    out.push(differing(key_names, rk, KeyDifference::MissingOnLeft));
                    right.next();
                } else {
                    out.push(differing(key_names, lk, KeyDifference::MissingOnRight));
                    left.next();
                }
            }
            (Some((lk, _)), None) => {
                out.push(differing(key_names, lk, KeyDifference::MissingOnRight));
                left.next();
            }
            (None, Some((rk, _))) => {
                out.push(differing(key_names, rk, KeyDifference::MissingOnLeft));
                right.next();
            }
            (None, None) => break,
        }
    }
    out
}

fn differing(key_names: &[String], values: &[String], difference: KeyDifference) -> DifferingKey {
    DifferingKey {
        key: format!("({})=({})", key_names.join(", "), values.join(", ")),
        difference,
    }
}

impl VerifyReport {
    /// True when every table is equal on both sides.
    pub fn is_equal(&self) -> bool {
        self.tables.iter().all(|t| t.equal)
    }

    /// A plain-text report for people: one line per table, then the differing keys and
    /// notes of each table that differs, then a verdict line.
    pub fn render_table(&self) -> String {
        let headers = [
            "table".to_owned(),
            format!("{} rows", self.left),
            format!("{} rows", self.right),
            "result".to_owned(),
        ];
        let count = |rows: Option<u64>| rows.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let lines: Vec<[String; 4]> = self
            .tables
            .iter()
            .map(|t| {
                [
                    t.table.clone(),
                    count(t.left_rows),
                    count(t.right_rows),
                    self.outcome(t),
                ]
            })
            .collect();
        let mut widths = headers.clone().map(|h| h.chars().count());
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&headers).chain(&lines) {
            let _ = writeln!(
                out,
                "{:<w0$}  {:>w1$}  {:>w2$}  {}",
                line[0],
                line[1],
                line[2],
                line[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
            );
        }
        for t in self.tables.iter().filter(|t| !t.equal) {
            if t.differing_keys.is_empty() && t.notes.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{}:", t.table);
            for key in &t.differing_keys {
                let how = match key.difference {
                    KeyDifference::Different => "differs".to_owned(),
                    KeyDifference::MissingOnLeft => format!("missing on {}", self.left),
                    KeyDifference::MissingOnRight => format!("missing on {}", self.right),
                };
                let _ = writeln!(out, "  {}: {how}", key.key);
            }
            if t.keys_truncated {
                let _ = writeln!(
                    out,
                    "  ... more keys differ; only the first {} are listed",
                    t.differing_keys.len()
                );
            }
            for note in &t.notes {
                let _ = writeln!(out, "  note: {note}");
            }
        }
        let differing = self.tables.iter().filter(|t| !t.equal).count();
        let _ = if differing == 0 {
            writeln!(
                out,
                "\n{} and {} are equal: {} table(s) compared",
                self.left,
                self.right,
                self.tables.len()
            )
        } else {
            writeln!(
                out,
                "\n{} and {} differ in {differing} of {} table(s)",
                self.left,
                self.right,
                self.tables.len()
            )
        };
        out
    }

    fn outcome(&self, t: &TableResult) -> String {
        match t.status {
            TableStatus::Equal => "equal".to_owned(),
            TableStatus::MissingOnLeft => format!("missing on {}", self.left),
            TableStatus::MissingOnRight => format!("missing on {}", self.right),
            TableStatus::MissingOnBoth => format!("missing on {} and {}", self.left, self.right),
            TableStatus::Different => {
                let mut parts = Vec::new();
                if t.left_rows != t.right_rows {
                    parts.push("row counts differ".to_owned());
                } else if t.left_checksum != t.right_checksum {
                    parts.push("checksums differ".to_owned());
                }
                if !t.differing_keys.is_empty() {
                    let more = if t.keys_truncated { "+" } else { "" };
                    parts.push(format!("{}{more} key(s) differ", t.differing_keys.len()));
                }
                if t.left_rows == t.right_rows && t.left_checksum == t.right_checksum {
                    parts.push("columns differ".to_owned());
                }
                format!("different: {}", parts.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, hash: &str) -> KeyedRow {
        (vec![key.to_owned()], hash.to_owned())
    }

    #[test]
    fn diff_walks_both_lists_in_key_order() {
        let keys = vec!["id".to_owned()];
        // Key order 1 < 2 < 3 < 4 < 5; texts would sort differently ("10" < "9").
        let left = vec![row("1", "a"), row("2", "b"), row("4", "d"), row("5", "e")];
        let right = vec![row("2", "b"), row("3", "c"), row("4", "x"), row("6", "f")];
        let out = diff_rows(&keys, left, right);
        let got: Vec<(String, KeyDifference)> =
            out.into_iter().map(|d| (d.key, d.difference)).collect();
        assert_eq!(
            got,
            vec![
                ("(id)=(1)".to_owned(), KeyDifference::MissingOnRight),
                ("(id)=(3)".to_owned(), KeyDifference::MissingOnLeft),
                ("(id)=(4)".to_owned(), KeyDifference::Different),
                ("(id)=(5)".to_owned(), KeyDifference::MissingOnRight),
                ("(id)=(6)".to_owned(), KeyDifference::MissingOnLeft),
            ]
        );
    }

    #[test]
    fn ranges_become_row_comparisons_with_cast_bounds() {
        let table = TableSchema {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                Column {
                    name: "region".into(),
                    type_name: "text".into(),
                    type_oid: 25,
                    nullable: false,
                    kind: ferry_shared::catalog::Kind::Text,
                },
                Column {
                    name: "id".into(),
                    type_name: "integer".into(),
                    type_oid: 23,
                    nullable: false,
                    kind: ferry_shared::catalog::Kind::Int32,
                },
            ],
            primary_key: vec![0, 1],
            replica_identity: 'd',
        };
        let columns: Vec<&Column> = table.columns.iter().collect();
        let collatable: HashSet<String> = ["region".to_owned()].into();
        let plan = Plan::new(&table, &columns, &["region", "id"], &collatable);
        let range = KeyRange {
            lower: Some(vec!["eu".into(), "7".into()]),
            upper: Some(vec!["us".into(), "1".into()]),
        };
        let (condition, params) = plan.condition(&range);
        assert_eq!(
            condition,
            "(\"region\" COLLATE \"C\", \"id\") >= (($1::text::text) COLLATE \"C\", ($2::text::integer)) \
             AND (\"region\" COLLATE \"C\", \"id\") < (($3::text::text) COLLATE \"C\", ($4::text::integer))"
        );
        assert_eq!(params, vec!["eu", "7", "us", "1"]);
        assert_eq!(plan.condition(&KeyRange::ALL).0, "true");
        assert!(plan.row_hash.contains("md5(ROW(\"region\", \"id\")::text)"));
    }
}
