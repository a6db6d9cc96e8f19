//! What the coordinator reads and changes in the databases: importer positions (to
//! decide "drained"), sequences, slots and publications, row counts.
//!
//! Every function here is idempotent, so a cutover step can be retried after any
//! failure or restart.

use std::collections::{BTreeMap, HashMap};

use ferry_shared::catalog::{quote_ident, quote_literal};
use ferry_shared::config::Config;
use ferry_shared::envelope::OpCounts;
use ferry_shared::error_policy::{classify_pg, describe_pg, ErrorClass};
use ferry_shared::metadata::{self, MetadataError};
use ferry_shared::state::{ExporterFinal, SequenceValue};
use ferry_shared::topics::Destination;
use ferry_shared::value::session_settings_sql;
use tokio_postgres::Client;

/// Why the coordinator could not read or change a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The destination has no section in the configuration.
    #[error("the {0} database is not configured: add a [{section}] section to ferry.toml", section = .0.as_str().replace('-', "_"))]
    NotConfigured(Destination),
    /// The server can't be reached (or refused the login).
    #[error("cannot reach the {destination} database")]
    Connect {
        /// Which database.
        destination: Destination,
        /// Why.
        #[source]
        source: ferry_shared::config::ConnectError,
    },
    /// A statement failed.
    #[error("{what}: {}", describe_pg(.source))]
    Sql {
        /// What was being done, naming the object.
        what: String,
        /// The database's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Reading `ferry_metadata` failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Sequences recorded on the old primary do not exist on the destination.
    #[error("sequence(s) {names} do not exist on the {destination}: create them as on the old primary; the cutover goes on by itself once they exist")]
    MissingSequences {
        /// `schema.name`, comma-separated.
        names: String,
        /// Where they are missing.
        destination: Destination,
    },
}

impl DbError {
    /// Its class under the one error policy.
    pub fn class(&self) -> ErrorClass {
        match self {
            DbError::NotConfigured(_) | DbError::MissingSequences { .. } => ErrorClass::Definite,
            DbError::Connect { source, .. } => source.class(),
            DbError::Sql { source, .. } => classify_pg(source),
            DbError::Metadata(e) => e.class(),
        }
    }

    /// The error and its causes on one line, for status and reports.
    pub fn describe(&self) -> String {
        ferry_shared::process::error_chain(self)
    }

    fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> DbError {
        let what = what.into();
        move |source| DbError::Sql { what, source }
    }
}

/// A database reached for one task; the connection closes on drop.
pub struct Db {
    /// The client.
    pub client: Client,
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Drop for Db {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Connects with Ferry's session settings; the error names the database.
pub async fn connect(config: &Config, destination: Destination) -> Result<Db, DbError> {
    let Some(db) = config.database(destination) else {
        return Err(DbError::NotConfigured(destination));
    };
    let (client, conn) = db.connect().await.map_err(|source| DbError::Connect {
        destination,
        source,
    })?;
    client
        .batch_execute(&session_settings_sql())
        .await
        .map_err(DbError::sql(format!(
            "setting up a session on the {destination}"
        )))?;
    Ok(Db { client, conn })
}

/// Stored positions of `group` in `db`: (topic, partition) -> (next offset, last
/// applied VSN). Empty when no importer has written there yet.
pub async fn positions(
    db: &Db,
    group: &str,
) -> Result<HashMap<(String, i32), (i64, i64)>, DbError> {
    Ok(metadata::positions(&db.client, group)
        .await?
        .into_iter()
        .map(|p| ((p.topic, p.partition), (p.next_offset, p.last_vsn.as_i64())))
        .collect())
}

/// How far `group` is from the end of a stopped stream: the number of records not yet
/// applied (0 = drained). Drained means the stored position of every partition reached
/// the exporter's final end offset (DESIGN.md §4a).
pub fn remaining(positions: &HashMap<(String, i32), (i64, i64)>, fin: &ExporterFinal) -> i64 {
    let mut left = 0;
    for (topic, ends) in &fin.end_offsets {
        for (p, end) in ends.iter().enumerate() {
            let at = positions
                .get(&(topic.clone(), p as i32))
                .map_or(0, |(next, _)| *next);
            left += (end - at).max(0);
        }
    }
    left
}

/// Sets every sequence of `sequences` on `db` to the recorded value. A sequence missing
/// on the destination is an error naming it.
pub async fn set_sequences(
    db: &Db,
    destination: Destination,
    sequences: &[SequenceValue],
) -> Result<usize, DbError> {
    let mut missing = Vec::new();
    for s in sequences {
        let name = format!("{}.{}", quote_ident(&s.schema), quote_ident(&s.name));
        let exists: bool = db
            .client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL AND (SELECT relkind FROM pg_class WHERE oid = to_regclass($1)) = 'S'",
                &[&name],
            )
            .await
            .map_err(DbError::sql(format!(
                "looking up sequence {}.{}",
                s.schema, s.name
            )))?
            .get(0);
        if !exists {
            missing.push(format!("{}.{}", s.schema, s.name));
            continue;
        }
        db.client
            .execute(
                &format!("SELECT setval({}, $1, $2)", quote_literal(&name)),
                &[&s.last_value, &s.is_called],
            )
            .await
            .map_err(DbError::sql(format!(
                "setting sequence {}.{} on the {destination} to {}",
                s.schema, s.name, s.last_value
            )))?;
    }
    if !missing.is_empty() {
        return Err(DbError::MissingSequences {
            names: missing.join(", "),
            destination,
        });
    }
    Ok(sequences.len())
}

/// Drops replication slot `slot` and publication `slot` on `db` if they exist. A slot
/// still in use by a session is dropped only when `terminate` (the session is ended
/// first); otherwise the answer is `Ok(false)`.
pub async fn drop_slot(db: &Db, slot: &str, terminate: bool) -> Result<bool, DbError> {
    let row = db
        .client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(DbError::sql(format!("looking up replication slot {slot}")))?;
    if let Some(row) = row {
        let pid: Option<i32> = row.get(0);
        if let Some(pid) = pid {
            if !terminate {
                return Ok(false);
            }
            let _ = db
                .client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        db.client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NULL",
                &[&slot],
            )
            .await
            .map_err(DbError::sql(format!("dropping replication slot {slot}")))?;
        if slot_exists(db, slot).await? {
            return Ok(false);
        }
    }
    db.client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(slot)))
        .await
        .map_err(DbError::sql(format!("dropping publication {slot}")))?;
    Ok(true)
}

/// True when replication slot `slot` exists in `db`'s cluster.
pub async fn slot_exists(db: &Db, slot: &str) -> Result<bool, DbError> {
    Ok(db
        .client
        .query_one(
            "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(DbError::sql(format!("looking up replication slot {slot}")))?
        .get(0))
}

/// Per-table import counts of `group` in `db`, by `schema.table`.
pub async fn table_counts(db: &Db, group: &str) -> Result<BTreeMap<String, OpCounts>, DbError> {
    Ok(metadata::table_counts(&db.client, group)
        .await?
        .into_iter()
        .map(|((schema, table), counts)| (format!("{schema}.{table}"), counts))
        .collect())
}

/// `count(*)` of a table, `None` when it does not exist there.
pub async fn row_count(db: &Db, schema: &str, table: &str) -> Result<Option<i64>, DbError> {
    let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let exists: bool = db
        .client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .map_err(DbError::sql(format!("looking up table {schema}.{table}")))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let n: i64 = db
        .client
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await
        .map_err(DbError::sql(format!("counting rows of {schema}.{table}")))?
        .get(0);
    Ok(Some(n))
}
