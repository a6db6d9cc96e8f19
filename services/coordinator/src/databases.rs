//! What the coordinator reads and changes in the databases: importer positions (to
//! decide "drained"), sequences, slots and publications, row counts.
//!
//! Every function here is idempotent, so a cutover step can be retried after any
//! failure or restart.

use std::collections::{BTreeMap, HashMap};

use ferry_shared::catalog::{quote_ident, quote_literal};
use ferry_shared::config::{Config, DatabaseConfig};
use ferry_shared::state::{ExporterFinal, SequenceValue};
use ferry_shared::topics::Destination;
use ferry_shared::value::session_settings_sql;
use tokio_postgres::Client;

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

/// The configuration of `destination`'s database, if configured.
pub fn database(config: &Config, destination: Destination) -> Option<&DatabaseConfig> {
    match destination {
        Destination::Target => config.target.as_ref(),
        Destination::SourceReplica => config.source_replica.as_ref(),
        Destination::Source => config.source.as_ref(),
    }
}

/// Connects with Ferry's session settings; the error names the database.
pub async fn connect(config: &Config, destination: Destination) -> Result<Db, String> {
    let Some(db) = database(config, destination) else {
        return Err(format!(
            "the {destination} database is not configured: add a [{}] section to ferry.toml",
            destination.as_str().replace('-', "_")
        ));
    };
    let (client, conn) = db
        .connect()
        .await
        .map_err(|e| format!("cannot reach the {destination} database: {e}"))?;
    client
        .batch_execute(&session_settings_sql())
        .await
        .map_err(|e| format!("setting up a session on the {destination}: {e}"))?;
    Ok(Db { client, conn })
}

/// Stored positions of `group` in `db`: (topic, partition) -> (next offset, last
/// applied VSN). Empty when no importer has written there yet.
pub async fn positions(db: &Db, group: &str) -> Result<HashMap<(String, i32), (i64, i64)>, String> {
    let exists: bool = db
        .client
        .query_one(
            "SELECT to_regclass('ferry_metadata.positions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        return Ok(HashMap::new());
    }
    let rows = db
        .client
        .query(
            "SELECT topic, partition, next_offset, last_vsn FROM ferry_metadata.positions WHERE consumer_group = $1",
            &[&group],
        )
        .await
        .map_err(|e| format!("reading ferry_metadata.positions: {e}"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (r.get::<_, String>(0), r.get::<_, i32>(1)),
                (r.get(2), r.get(3)),
            )
        })
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
) -> Result<usize, String> {
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
            .map_err(|e| format!("looking up sequence {}.{}: {e}", s.schema, s.name))?
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
            .map_err(|e| {
                format!(
                    "setting sequence {}.{} on the {destination} to {}: {e}",
                    s.schema, s.name, s.last_value
                )
            })?;
    }
    if !missing.is_empty() {
        return Err(format!(
            "sequence(s) {} do not exist on the {destination}: create them as on the old primary; the cutover goes on by itself once they exist",
            missing.join(", ")
        ));
    }
    Ok(sequences.len())
}

/// Drops replication slot `slot` and publication `slot` on `db` if they exist. A slot
/// still in use by a session is dropped only when `terminate` (the session is ended
/// first); otherwise the answer is `Ok(false)`.
pub async fn drop_slot(db: &Db, slot: &str, terminate: bool) -> Result<bool, String> {
    let row = db
        .client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| format!("looking up replication slot {slot}: {e}"))?;
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
            .map_err(|e| format!("dropping replication slot {slot}: {e}"))?;
        if slot_exists(db, slot).await? {
            return Ok(false);
        }
    }
    db.client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(slot)))
        .await
        .map_err(|e| format!("dropping publication {slot}: {e}"))?;
    Ok(true)
}

/// True when replication slot `slot` exists in `db`'s cluster.
pub async fn slot_exists(db: &Db, slot: &str) -> Result<bool, String> {
    Ok(db
        .client
        .query_one(
            "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| format!("looking up replication slot {slot}: {e}"))?
        .get(0))
}

/// Per-table import counts of `group` in `db`, by `schema.table`.
pub async fn table_counts(db: &Db, group: &str) -> Result<BTreeMap<String, [i64; 4]>, String> {
    let exists: bool = db
        .client
        .query_one(
            "SELECT to_regclass('ferry_metadata.table_counts') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows = db
        .client
        .query(
            "SELECT schema_name, table_name, snapshot_rows, inserts, updates, deletes \
             FROM ferry_metadata.table_counts WHERE consumer_group = $1",
            &[&group],
        )
        .await
        .map_err(|e| format!("reading ferry_metadata.table_counts: {e}"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)),
                [r.get(2), r.get(3), r.get(4), r.get(5)],
            )
        })
        .collect())
}

/// `count(*)` of a table, `None` when it does not exist there.
pub async fn row_count(db: &Db, schema: &str, table: &str) -> Result<Option<i64>, String> {
    let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let exists: bool = db
        .client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let n: i64 = db
        .client
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await
        .map_err(|e| format!("counting rows of {schema}.{table}: {e}"))?
        .get(0);
    Ok(Some(n))
}
