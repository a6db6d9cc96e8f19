//! [`Side`]: one open database, and the SQL it runs for a table or key range.

use std::collections::HashSet;

use ferry_shared::catalog::{self, CatalogError, TableName, TableSchema, TypeCatalog};
use ferry_shared::config::DatabaseConfig;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::plan::{KeyRange, Plan};
use super::{session_settings_sql, VerifyError};

/// Row count and checksum of a table or key range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sums {
    pub(super) rows: u64,
    pub(super) sum: String,
}

/// One row of a small range: its key values as text and the md5 of its text.
pub(super) type KeyedRow = (Vec<String>, String);

/// One open database, named for messages.
pub(super) struct Side {
    pub(super) name: String,
    database: String,
    pub(super) client: Client,
    connection: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Side {
    pub(super) async fn open(config: &DatabaseConfig, name: &str) -> Result<Side, VerifyError> {
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
    pub(super) async fn close(self) {
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

    pub(super) async fn types(&self) -> Result<TypeCatalog, VerifyError> {
        TypeCatalog::load(&self.client)
            .await
            .map_err(|e| self.catalog_error(e))
    }

    pub(super) async fn begin(&self, table: &TableName) -> Result<(), VerifyError> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|e| self.query_error(table, e))
    }

    pub(super) async fn commit(&self, table: &TableName) -> Result<(), VerifyError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| self.query_error(table, e))
    }

    /// The table's columns and the columns Ferry can't move, or `None` if it does not
    /// exist.
    pub(super) async fn inspect(
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
    pub(super) async fn collatable_columns(
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

    pub(super) async fn checksum(
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
    pub(super) async fn boundaries(
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
    pub(super) async fn rows(
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
