//! What the coordinator reads and changes in the databases: importer positions (to
//! decide "drained"), sequences, slots and publications, row counts.
//!
//! Every function here is idempotent, so a cutover step can be retried after any
//! failure or restart.

use std::collections::{BTreeMap, HashMap};

use ferry_shared::catalog::{quote_ident, quote_literal};
use ferry_shared::config::{Config, Engine};
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

/// Sets every sequence of `sequences` on `db` (the new primary, drained): to the larger
/// of the value recorded on the old primary and the largest value any column it feeds
/// (serial, identity or `DEFAULT nextval`) holds on `db`. Gaps are fine, a collision is
/// not: `last_value` can lag behind the rows (values inserted explicitly, or written by
/// a session whose cached block was never reported), and every value the stream brought
/// that still exists is in those columns. A sequence missing on the destination is an
/// error naming it. Returns how many were set and how many were raised above the
/// recorded value.
pub async fn set_sequences(
    db: &Db,
    destination: Destination,
    sequences: &[SequenceValue],
) -> Result<SequencesSet, DbError> {
    let mut missing = Vec::new();
    let mut set = SequencesSet::default();
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
        let seen = largest_value_fed(db, &name, s).await?;
        let (value, is_called) = match seen {
            Some(seen) if seen > s.last_value || (seen == s.last_value && !s.is_called) => {
                set.raised += 1;
                (seen, true)
            }
            _ => (s.last_value, s.is_called),
        };
        db.client
            .execute(
                &format!("SELECT setval({}, $1, $2)", quote_literal(&name)),
                &[&value, &is_called],
            )
            .await
            .map_err(DbError::sql(format!(
                "setting sequence {}.{} on the {destination} to {value}",
                s.schema, s.name
            )))?;
        set.set += 1;
    }
    if !missing.is_empty() {
        return Err(DbError::MissingSequences {
            names: missing.join(", "),
            destination,
        });
    }
    Ok(set)
}

/// What [`set_sequences`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SequencesSet {
    /// Sequences set.
    pub set: usize,
    /// Of those, set above the old primary's value (a column held a larger one).
    pub raised: usize,
}

/// The largest value in the columns the sequence `name` (quoted, qualified) feeds:
/// owned columns (serial and identity, `pg_depend`) and columns whose default calls
/// `nextval` on it. `None` when no column holds a value.
async fn largest_value_fed(db: &Db, name: &str, s: &SequenceValue) -> Result<Option<i64>, DbError> {
    let columns = db
        .client
        .query(
            "SELECT DISTINCT n.nspname::text, c.relname::text, a.attname::text \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') \
               AND NOT c.relispartition \
               AND (EXISTS (SELECT 1 FROM pg_depend d \
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = to_regclass($1) \
                              AND d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid \
                              AND d.refobjsubid = a.attnum AND d.deptype IN ('a', 'i')) \
                    OR EXISTS (SELECT 1 FROM pg_depend d \
                            WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid \
                              AND d.refclassid = 'pg_class'::regclass \
                              AND d.refobjid = to_regclass($1)))",
            &[&name],
        )
        .await
        .map_err(DbError::sql(format!(
            "looking up the columns sequence {}.{} feeds",
            s.schema, s.name
        )))?;
    let mut largest: Option<i64> = None;
    for row in columns {
        let (schema, table, column): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let max: Option<i64> = db
            .client
            .query_one(
                &format!(
                    "SELECT max({})::bigint FROM {}.{}",
                    quote_ident(&column),
                    quote_ident(&schema),
                    quote_ident(&table)
                ),
                &[],
            )
            .await
            .map_err(DbError::sql(format!(
                "reading the largest {schema}.{table}.{column} (fed by sequence {}.{})",
                s.schema, s.name
            )))?
            .get(0);
        largest = largest.max(max);
    }
    Ok(largest)
}

/// What dropping a slot came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotDrop {
    /// The slot and the publication are gone (or never existed).
    Dropped,
    /// A session still streams from the slot (PostgreSQL: `active_pid`).
    InUse,
    /// The database refused to drop it, with its reason (YugabyteDB refuses until the
    /// slot's consumer has been gone for about 5 minutes): try again later.
    Refused(String),
}

/// Drops replication slot `slot` and publication `slot` on `db` if they exist.
///
/// PostgreSQL: a slot still in use by a session is dropped only when `terminate` (the
/// session is ended first); otherwise [`SlotDrop::InUse`]. YugabyteDB: `active_pid` is
/// not reliable there and sessions are not ended; the drop is simply tried, and a
/// refusal is [`SlotDrop::Refused`] with the database's reason, to try again.
pub async fn drop_slot(
    db: &Db,
    engine: Engine,
    slot: &str,
    terminate: bool,
) -> Result<SlotDrop, DbError> {
    if engine == Engine::Yugabytedb {
        let dropped = db
            .client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        if let Err(e) = dropped {
            if classify_pg(&e) == ErrorClass::Transient {
                return Err(DbError::Sql {
                    what: format!("dropping replication slot {slot}"),
                    source: e,
                });
            }
            return Ok(SlotDrop::Refused(describe_pg(&e)));
        }
        if slot_exists(db, slot).await? {
            return Ok(SlotDrop::Refused(
                "the slot is still there after the drop".into(),
            ));
        }
    } else {
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
                    return Ok(SlotDrop::InUse);
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
                return Ok(SlotDrop::InUse);
            }
        }
    }
    db.client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(slot)))
        .await
        .map_err(DbError::sql(format!("dropping publication {slot}")))?;
    Ok(SlotDrop::Dropped)
}

/// True when replication slot `slot` exists and is ready: its creation reached a
/// consistent point (`confirmed_flush_lsn` is set then), so every transaction that
/// commits from now on is decoded. A slot still being created is already listed in
/// `pg_replication_slots`, but a transaction committed before its consistent point is
/// never streamed: an application moved over then could lose a write.
pub async fn slot_ready(db: &Db, slot: &str) -> Result<bool, DbError> {
    Ok(db
        .client
        .query_one(
            "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL",
            &[&slot],
        )
        .await
        .map_err(DbError::sql(format!("looking up replication slot {slot}")))?
        .get(0))
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
