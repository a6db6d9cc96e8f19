//! The publication and the replication slot: finding or creating them, the snapshot
//! exported with a new slot, and the replication sessions that stream from the slot.
//!
//! Both are named `ferry_<id>_<stream>` ([`crate::slot_name`]). Invariants (DESIGN.md
//! §4a):
//!
//! - A new slot is created on the session that will stream from it, with an exported
//!   snapshot: the snapshot lives until that session's next command,
//!   `START_REPLICATION`, which is sent after the snapshot was read. The stream then
//!   starts at the slot's consistent point: no gap, no overlap.
//! - An existing slot is never dropped or recreated here: it holds every change after
//!   its confirmed position, which is what a restart replays. A slot or publication
//!   that a stored checkpoint names and that is gone is a definite error (the changes
//!   in between are lost). The coordinator drops both once the migration ends or the
//!   stream stopped for a cutover.
//! - A table selected now but missing from an existing publication is an error: its
//!   changes would be lost silently.
//! - A snapshot for chunks redone after a crash is exported from an ordinary session
//!   ([`plain_snapshot`]), which stays open while readers use it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_shared::catalog::quote_ident;
use ferry_shared::checkpoint::ExporterCheckpoint;
use ferry_shared::config::{DatabaseConfig, SslMode};
use ferry_shared::metadata;
use ferry_shared::position::Lsn;
use ferry_shared::value::session_settings_options;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, TlsConfig};
use tokio_postgres::Client;

use super::stream::PgChanges;
use super::PgSource;
use crate::source::{Opened, SnapshotView};
use crate::{AbortOnDrop, Error};
use ferry_shared::codec::TableEncoder;

/// A snapshot exported by PostgreSQL (`pg_export_snapshot()` or
/// `CREATE_REPLICATION_SLOT .. EXPORT_SNAPSHOT`): readers import it by name.
pub(crate) struct PgSnapshot {
    name: String,
    lsn: Lsn,
    /// The ordinary session that exported it, kept open while readers use it (none
    /// for a slot's snapshot: that lives as long as the replication session idles).
    _holder: Option<(Client, AbortOnDrop<Result<(), tokio_postgres::Error>>)>,
}

impl SnapshotView for PgSnapshot {
    fn name(&self) -> &str {
        &self.name
    }

    fn position(&self) -> Lsn {
        self.lsn
    }
}

/// A snapshot exported from an ordinary session (kept open while readers use it).
pub(crate) async fn plain_snapshot(db: &DatabaseConfig) -> Result<PgSnapshot, Error> {
    let (client, connection) = db.connect().await.map_err(Error::Connect)?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| Error::sql("opening the snapshot", e))?;
    let row = client
        .query_one(
            "SELECT pg_export_snapshot(), pg_current_wal_lsn()::text",
            &[],
        )
        .await
        .map_err(|e| Error::sql("exporting a snapshot", e))?;
    let name: String = row.get(0);
    let lsn: String = row.get(1);
    let lsn = lsn.parse().map_err(|e| Error::Internal(format!("{e}")))?;
    Ok(PgSnapshot {
        name,
        lsn,
        _holder: Some((client, AbortOnDrop(connection))),
    })
}

/// Finds or creates the publication and the slot ([`crate::source::Source::open_changes`]).
pub(crate) async fn open(
    source: &PgSource<'_>,
    checkpoint: Option<&ExporterCheckpoint>,
    encoders: &[Arc<TableEncoder>],
    export: bool,
) -> Result<Opened<PgSnapshot, PgChanges>, Error> {
    let PgSource {
        db,
        client,
        slot,
        publication,
        ..
    } = source;
    let (db, slot, publication) = (*db, *slot, *publication);
    ensure_stop_markers(client).await?;
    let mut tables: Vec<String> = encoders.iter().map(|e| e.table.qualified()).collect();
    tables.push(stop_markers_qualified());
    let pub_exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| Error::sql("looking up the publication", e))?
        .is_some();
    let slot_row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, plugin FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::sql("looking up the replication slot", e))?;
    if let Some(cp) = checkpoint {
        if cp.slot == slot && slot_row.is_none() {
            return Err(Error::SlotDropped {
                slot: slot.to_owned(),
            });
        }
        if !pub_exists {
            return Err(Error::PublicationDropped {
                publication: publication.to_owned(),
            });
        }
    }
    if !pub_exists {
        // Changes of partitions are published as changes of the selected
        // (partitioned) table, whose schema and topic Ferry knows (PostgreSQL 13+).
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| Error::sql("reading the server version", e))?
            .get(0);
        let with = if version >= 130000 {
            " WITH (publish_via_partition_root = true)"
        } else {
            ""
        };
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}{with}",
                quote_ident(publication),
                tables.join(", ")
            ))
            .await
            .map_err(|e| Error::sql(format!("creating publication {publication}"), e))?;
    } else {
        // A table selected now but missing from the publication would lose its
        // changes silently.
        let rows = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(|e| Error::sql("reading the publication's tables", e))?;
        let published: HashSet<(String, String)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let missing: Vec<String> = encoders
            .iter()
            .filter(|e| !published.contains(&(e.table.schema.clone(), e.table.name.clone())))
            .map(|e| e.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(Error::TablesChanged {
                publication: publication.to_owned(),
                tables: missing.join(", "),
            });
        }
        let (schema, table) = metadata::STOP_MARKERS;
        if !published.contains(&(schema.to_owned(), table.to_owned())) {
            // A publication made before stop markers were rows (a logical message
            // then): add the table, whose inserts are decoded from now on.
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(publication),
                    stop_markers_qualified()
                ))
                .await
                .map_err(|e| {
                    Error::sql(
                        format!("adding the stop markers to publication {publication}"),
                        e,
                    )
                })?;
        }
    }

    let Some(row) = slot_row else {
        return create_slot(db, slot, publication, export).await;
    };
    let slot_lsn: Option<String> = row.get(0);
    let confirmed: Lsn = slot_lsn.and_then(|t| t.parse().ok()).unwrap_or(Lsn::ZERO);
    Ok(Opened::Existing { confirmed })
}

/// `"ferry_metadata"."stop_markers"`.
fn stop_markers_qualified() -> String {
    let (schema, table) = metadata::STOP_MARKERS;
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Creates the stop-marker table ([`metadata::STOP_MARKERS`]) with REPLICA IDENTITY
/// FULL if needed: before the publication and the slot exist.
async fn ensure_stop_markers(client: &Client) -> Result<(), Error> {
    let what = "creating the table ferry_metadata.stop_markers, whose rows mark where a cutover stops the stream (grant the exporter's role CREATE on the database, or create the table as its owner)";
    // Created only when missing: `CREATE SCHEMA IF NOT EXISTS` needs the CREATE right
    // even when the schema is there, and DDL is slow on YugabyteDB.
    let present: bool = client
        .query_one(
            "SELECT to_regclass('ferry_metadata.stop_markers') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| Error::sql(what, e))?
        .get(0);
    if !present {
        client
            .batch_execute(metadata::STOP_MARKERS_SETUP_SQL)
            .await
            .map_err(|e| Error::sql(what, e))?;
    }
    let full: bool = client
        .query_one(metadata::STOP_MARKERS_IDENTITY_SQL, &[])
        .await
        .map_err(|e| Error::sql(what, e))?
        .get(0);
    if !full {
        client
            .batch_execute(&format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL",
                stop_markers_qualified()
            ))
            .await
            .map_err(|e| Error::sql(what, e))?;
    }
    Ok(())
}

/// A new slot, created on the session that will stream from it: its exported snapshot
/// lives until that session's next command, START_REPLICATION, which is sent after the
/// snapshot was read. The stream then starts at the slot's consistent point: no gap,
/// no overlap.
async fn create_slot(
    db: &DatabaseConfig,
    slot: &str,
    publication: &str,
    export: bool,
) -> Result<Opened<PgSnapshot, PgChanges>, Error> {
    let mut repl = ReplicationClient::connect_gated(config(db, slot, publication, Lsn::ZERO))
        .await
        .map_err(replication_error(db, "connecting for replication"))?;
    let rows = repl
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}",
            quote_ident(slot),
            if export {
                "EXPORT_SNAPSHOT"
            } else {
                "NOEXPORT_SNAPSHOT"
            }
        ))
        .await
        .map_err(replication_error(db, "creating the replication slot"))?;
    let row = rows.into_iter().next().unwrap_or_default();
    let text = |i: usize| {
        row.get(i)
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let lsn: Lsn = text(1).and_then(|t| t.parse().ok()).ok_or_else(|| {
        Error::Internal("CREATE_REPLICATION_SLOT returned no consistent point".into())
    })?;
    tracing::info!(slot, lsn = %lsn, "replication slot created");
    let snapshot = if export {
        text(2).map(|name| PgSnapshot {
            name,
            lsn,
            _holder: None,
        })
    } else {
        None
    };
    Ok(Opened::Created {
        at: lsn,
        snapshot,
        changes: PgChanges::new(repl, slot, publication),
    })
}

/// A gated replication session on the existing slot, to stream from `start`.
pub(crate) async fn connect(
    db: &DatabaseConfig,
    slot: &str,
    publication: &str,
    start: Lsn,
) -> Result<PgChanges, Error> {
    let mut repl = ReplicationClient::connect_gated(config(db, slot, publication, start))
        .await
        .map_err(replication_error(db, "connecting for replication"))?;
    // The session connects in the background: a command now makes a refused login or
    // TLS handshake show here, with the database's name, rather than at the start.
    repl.identify_system()
        .await
        .map_err(replication_error(db, "connecting for replication"))?;
    Ok(PgChanges::new(repl, slot, publication))
}

/// Opens a replication session on `db` with its sslmode and CA file, as the exporter
/// streams, and runs `IDENTIFY_SYSTEM` on it: a check that the replication connection
/// (TLS, authentication, the role's REPLICATION right, `pg_hba.conf`'s replication
/// lines) works, without a slot. Returns the server's system identifier.
pub async fn check_replication_connection(db: &DatabaseConfig) -> Result<String, Error> {
    let mut repl = ReplicationClient::connect_gated(config(db, "", "", Lsn::ZERO))
        .await
        .map_err(replication_error(db, "connecting for replication"))?;
    let system = repl
        .identify_system()
        .await
        .map_err(replication_error(db, "connecting for replication"))?;
    Ok(system.system_id)
}

/// The replication stream is read in chunks: the kernel wakes the reader once this
/// many bytes wait ([`pgwire_replication::ReadCoalescing`]), and less is read at the
/// latest [`READ_PERIOD`] after the socket was found empty. The walsender writes each
/// pgoutput message on its own; read as they arrived, a source committing tens of
/// thousands of one-row transactions a second woke the exporter 20k times a second,
/// 40 % of its CPU (docs/benchmarks.md, "Changes of 2026-12-08").
const READ_LOW_WATER: usize = 64 * 1024;

/// The longest a change waits below [`READ_LOW_WATER`] before it is read.
const READ_PERIOD: Duration = Duration::from_millis(2);

/// The replication session's settings: Ferry's value settings as startup options,
/// standby status updates every second, also when idle, so the server sees the
/// confirmed position move and does not time the session out, and the stream read in
/// chunks ([`READ_LOW_WATER`]).
fn config(db: &DatabaseConfig, slot: &str, publication: &str, start: Lsn) -> ReplicationConfig {
    ReplicationConfig::new(
        db.host.clone(),
        db.user.clone(),
        db.password.expose().to_owned(),
        db.database.clone(),
        slot.to_owned(),
        publication.to_owned(),
    )
    .with_port(db.port())
    .with_tls(tls_config(db))
    .with_options(session_settings_options())
    .with_application_name("ferry-exporter")
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(1))
    .with_read_coalescing(READ_LOW_WATER, READ_PERIOD)
    .with_start_lsn(pgwire_replication::Lsn(start.0))
    .with_ack_lsn(pgwire_replication::Lsn(start.0))
}

/// The replication connection's TLS, with the semantics of the SQL connections
/// ([`DatabaseConfig::connect`], libpq's): `disable` never uses TLS; `prefer` uses it
/// when the server offers it, without certificate checks; `require` insists on TLS and
/// checks the chain only when `sslrootcert` is set; `verify-ca` checks the chain
/// against `sslrootcert`; `verify-full` also checks that the certificate names `host`
/// (a DNS name, or an address against the certificate's IP entries).
fn tls_config(db: &DatabaseConfig) -> TlsConfig {
    let root = db
        .sslrootcert
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    match db.sslmode {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::default()
        },
        SslMode::Require => match root {
            Some(root) => TlsConfig::verify_ca(Some(root)),
            None => TlsConfig::require(),
        },
        SslMode::VerifyCa => TlsConfig::verify_ca(root),
        // The host itself as the name to check: the crate refuses verify-full with an
        // IP address otherwise, where libpq checks it against the IP entries.
        SslMode::VerifyFull => TlsConfig::verify_full(root).with_sni_hostname(db.host.clone()),
    }
}

/// A failure of the replication session while `what`. TLS problems name the database
/// and the settings to check; others the database and what was being done.
fn replication_error<'a>(
    db: &'a DatabaseConfig,
    what: &'a str,
) -> impl FnOnce(PgWireError) -> Error + 'a {
    move |source| {
        if matches!(source, PgWireError::Tls(_)) {
            return Error::ReplicationTls {
                database: db.display(),
                sslmode: db.sslmode.as_str(),
                sslrootcert: db.sslrootcert.clone().unwrap_or_default(),
                source,
            };
        }
        Error::Replication {
            what: format!("{what} ({})", db.display()),
            source,
        }
    }
}
