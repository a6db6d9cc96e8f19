//! The destination's catalog as the importer needs it: each table's columns and types,
//! primary key, other unique constraints and identity columns, read once per session
//! (per connection) and cached.
//!
//! A table that can't take the stream (missing, no primary key, a missing column) is a
//! definite failure naming the table, the destination and the event's VSN.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferry_shared::catalog::{self, CatalogError, TableName, TypeCatalog};
use ferry_shared::position::Vsn;
use tokio_postgres::Client;

use super::positions::db_failure;
use super::prepared::Statements;
use crate::error::Failure;

/// A destination table as the importer writes it.
#[derive(Debug)]
pub(crate) struct DestTable {
    pub(super) name: TableName,
    /// The destination it is on, as messages name it (`target`, ...).
    pub(super) destination: Arc<str>,
    pub(super) qualified: String,
    /// Column name -> type as `format_type` writes it.
    pub(super) types: HashMap<String, String>,
    /// Column name -> type OID (for COPY's binary format).
    pub(super) oids: HashMap<String, u32>,
    /// Primary key column names, in key order.
    pub(super) pk: Vec<String>,
    /// Has a unique constraint besides the primary key: apply in exact order.
    pub exact_order: bool,
    /// Columns `GENERATED ALWAYS AS IDENTITY`: inserts name them with `OVERRIDING
    /// SYSTEM VALUE` (the source's value is the truth), and an update may not set them.
    pub(super) identity_always: Vec<String>,
    /// Snapshot rows of this table were found present already: upsert them through a
    /// staging table instead of copying them straight in.
    pub(super) staged: AtomicBool,
    /// The session's staging table for this table (a temporary table, created outside
    /// any batch transaction: the apply transaction holds no DDL).
    pub(super) stage: String,
    /// Whether [`DestTable::stage`] exists in this session.
    pub(super) stage_ready: AtomicBool,
}

/// Destination tables, read from the destination's catalog once per session.
#[derive(Debug)]
pub(crate) struct Tables {
    /// The destination's name in messages (`target`, `source-replica`, a replay's label).
    destination: Arc<str>,
    types: Option<TypeCatalog>,
    tables: HashMap<TableName, Arc<DestTable>>,
    /// Staging tables named so far in this session (names are never reused).
    stages: u32,
    /// The connection's prepared statements.
    pub statements: Statements,
}

pub(super) fn quoted_name(t: &TableName) -> String {
    format!("\"{}.{}\"", t.schema, t.name)
}

fn definite(table: &TableName, destination: &str, what: &str, vsn: Vsn, fix: &str) -> Failure {
    Failure::Definite(format!(
        "table {} on the {destination} {what} (event vsn {vsn}): {fix}, then restart the importer; it resumes where it stopped",
        quoted_name(table)
    ))
}

impl DestTable {
    /// Creates this table's staging table if the session has none yet: a temporary
    /// table with the destination table's columns, emptied at every commit. Runs
    /// outside any transaction (DDL never enters a batch's transaction).
    pub(super) async fn ensure_stage(&self, client: &Client) -> Result<(), Failure> {
        if self.stage_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS pg_temp.{stage}; \
                 CREATE TEMP TABLE {stage} ON COMMIT DELETE ROWS AS SELECT * FROM {} WITH NO DATA",
                self.qualified,
                stage = self.stage
            ))
            .await
            .map_err(|e| db_failure(&format!("creating the staging table of {}", self.name), &e))?;
        self.stage_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// A staging table is needed (snapshot rows are there already) but this session
    /// has not created it yet: the batch is rolled back and applied again after
    /// [`DestTable::ensure_stage`].
    pub(super) fn needs_stage(&self) -> bool {
        self.staged.load(Ordering::Relaxed) && !self.stage_ready.load(Ordering::Relaxed)
    }

    /// A definite failure of this table on its destination.
    pub(super) fn definite(&self, what: &str, vsn: Vsn, fix: &str) -> Failure {
        definite(&self.name, &self.destination, what, vsn, fix)
    }
}

impl Tables {
    /// Nothing read yet, of the destination named `destination` in messages.
    pub(crate) fn new(destination: &str) -> Tables {
        Tables {
            destination: Arc::from(destination),
            types: None,
            tables: HashMap::new(),
            stages: 0,
            statements: Statements::default(),
        }
    }

    /// The destination table `name`, read from the catalog on first use.
    pub(crate) async fn get(
        &mut self,
        client: &Client,
        name: &TableName,
        vsn: Vsn,
    ) -> Result<Arc<DestTable>, Failure> {
        let destination = self.destination.clone();
        let destination: &str = &destination;
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
            destination: self.destination.clone(),
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
            stage: {
                self.stages += 1;
                format!("ferry_stage_{}", self.stages)
            },
            stage_ready: AtomicBool::new(false),
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
