//! PostgreSQL as a [`Source`]: preflight ([`check`]), the snapshot read with COPY in
//! heap-block chunks ([`snapshot`]), the publication and the logical replication slot
//! ([`slot`]), the replication stream ([`stream`]) and its pgoutput decoder
//! ([`pgoutput`]).
//!
//! Positions are LSNs. Protocol invariants (DESIGN.md §4a):
//!
//! - **When the LSN advances.** The slot's confirmed (flush) position is raised only to
//!   the LSN of a checkpoint stored in `_state`, which is written only after Kafka
//!   acknowledged every event before it. Until then PostgreSQL keeps the WAL, so a crash
//!   at any point loses nothing.
//! - **Why keepalives matter.** The replication session sends standby status updates
//!   every second, also when idle, or the server times the session out. A keepalive
//!   between transactions also moves the position past WAL of tables outside the
//!   publication, so that the slot does not hold WAL forever on a source whose selected
//!   tables are idle.
//! - **What a restart replays.** A restarted stream starts at the checkpoint's LSN (the
//!   end of the last transaction whose events are all in Kafka) and receives every
//!   transaction committed after it again, whole and in commit order; the stamper gives
//!   them the checkpoint's VSNs again. Events of a transaction the previous run did not
//!   finish are dropped and come again.
//! - **How a stop finds its end.** On an ordinary session [`write_stop`] inserts a row
//!   with a unique token into `ferry_metadata.stop_markers`, a table of the stream's
//!   publication (created, with REPLICA IDENTITY FULL, before the slot), in a small
//!   transaction committed synchronously (decoding reads only flushed WAL). Logical
//!   decoding sends transactions in commit order, so when the stream delivers the
//!   marker's transaction, every transaction committed before the marker has been sent
//!   to the stamper; the stream ends after that transaction's commit. Markers are
//!   matched by token, never by comparing positions (on YugabyteDB positions are
//!   per-slot sequence numbers), and no logical message is used (YugabyteDB never
//!   streams one). The marker may arrive before the call returns its token, so every
//!   token seen is kept.

pub(crate) mod check;
mod copy_binary;
pub(crate) mod pgoutput;
mod slot;
mod snapshot;
pub use snapshot::{copy_rows, reads_binary};
mod stream;

use std::collections::HashSet;
use std::sync::Arc;

use ferry_shared::catalog::{quote_ident, quote_literal, TableSchema};
use ferry_shared::checkpoint::{Chunk, ExporterCheckpoint};
use ferry_shared::config::{Config, DatabaseConfig, ExportType};
use ferry_shared::position::Lsn;
use ferry_shared::state::SequenceValue;
use ferry_shared::topics::Stream;
use ferry_shared::value::session_settings_sql;
use tokio_postgres::Client;

use crate::source::{Opened, Readers, SnapshotView, Source, SourceTable, Work};
use crate::{AbortOnDrop, Error};
use ferry_shared::codec::TableEncoder;

pub use slot::check_replication_connection;
pub(crate) use slot::PgSnapshot;
pub(crate) use stream::PgChanges;

/// A PostgreSQL database exported by one stream, over one ordinary session (catalog
/// reads, the publication, the stop message, sequences) that lives as long as this.
pub(crate) struct PgSource<'a> {
    config: &'a Config,
    db: &'a DatabaseConfig,
    client: Client,
    _connection: AbortOnDrop<Result<(), tokio_postgres::Error>>,
    stream: Stream,
    slot: &'a str,
    publication: &'a str,
}

impl<'a> PgSource<'a> {
    /// Connects to `db` and applies Ferry's session settings.
    pub(crate) async fn connect(
        config: &'a Config,
        db: &'a DatabaseConfig,
        stream: Stream,
        slot: &'a str,
        publication: &'a str,
    ) -> Result<PgSource<'a>, Error> {
        let client = session(db).await?;
        Ok(PgSource {
            config,
            db,
            client: client.0,
            _connection: client.1,
            stream,
            slot,
            publication,
        })
    }
}

/// An ordinary session with Ferry's settings.
pub(crate) async fn session(
    db: &DatabaseConfig,
) -> Result<(Client, AbortOnDrop<Result<(), tokio_postgres::Error>>), Error> {
    let (client, connection) = db.connect().await.map_err(Error::Connect)?;
    let connection = AbortOnDrop(connection);
    client
        .batch_execute(&session_settings_sql())
        .await
        .map_err(|e| Error::sql("setting the session", e))?;
    Ok((client, connection))
}

/// The source preflight of `run`, on an open session with Ferry's settings.
pub(crate) async fn preflight(
    client: &Client,
    config: &Config,
    source: &DatabaseConfig,
    slot: &str,
) -> Result<Vec<TableSchema>, Error> {
    Ok(check::preflight(
        client,
        &check::CheckInput {
            migration: &config.migration,
            schemas: &source.schemas,
            slot_name: slot,
            needs_replication: config.exporter.export_type != ExportType::SnapshotOnly,
            engine: source.engine,
        },
    )
    .await?)
}

/// Tables (schema, name) with a unique or exclusion constraint besides the primary key.
async fn totally_ordered_tables(client: &Client) -> Result<HashSet<(String, String)>, Error> {
    let rows = client
        .query(
            "SELECT DISTINCT n.nspname::text, c.relname::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE (i.indisunique AND NOT i.indisprimary) OR i.indisexclusion",
            &[],
        )
        .await
        .map_err(|e| Error::sql("listing unique constraints", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Writes a stop marker (see the module doc) and returns its token.
async fn write_stop(client: &Client, slot: &str, stream: Stream) -> Result<String, Error> {
    // Unique per stop: a restarted stop writes a new one, and an older marker of an
    // interrupted stop is not mistaken for it.
    let token = format!(
        "{slot}.{}.{}",
        ferry_shared::clock::now_ms(),
        std::process::id()
    );
    // Committed synchronously, so that logical decoding (which reads flushed WAL only)
    // reaches it even on an otherwise idle database.
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL synchronous_commit = on; \
             INSERT INTO ferry_metadata.stop_markers (token, stream) VALUES ({}, {}); COMMIT",
            quote_literal(&token),
            quote_literal(stream.as_str())
        ))
        .await
        .map_err(|e| {
            Error::sql(
                "writing the stop marker into ferry_metadata.stop_markers",
                e,
            )
        })?;
    Ok(token)
}

/// Every sequence in `schemas` with its exact state, read from the sequence itself.
async fn sequences(client: &Client, schemas: &[String]) -> Result<Vec<SequenceValue>, Error> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'S' AND n.nspname = ANY($1) ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .map_err(|e| Error::sql("listing sequences", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let value = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}.{}",
                    quote_ident(&schema),
                    quote_ident(&name)
                ),
                &[],
            )
            .await
            .map_err(|e| Error::sql(format!("reading sequence {schema}.{name}"), e))?;
        out.push(SequenceValue {
            schema,
            name,
            last_value: value.get(0),
            is_called: value.get(1),
        });
    }
    Ok(out)
}

impl Source for PgSource<'_> {
    type Snapshot = PgSnapshot;
    type Changes = PgChanges;

    async fn tables(&self) -> Result<Vec<SourceTable>, Error> {
        if self.stream == Stream::Target {
            // Until cutover only Ferry writes the target, so Ferry may set what its change
            // stream needs; the source is the operator's, and its preflight only reports.
            check::set_replica_identity_full(
                &self.client,
                &self.config.migration,
                &self.db.schemas,
            )
            .await?;
        }
        let tables = preflight(&self.client, self.config, self.db, self.slot).await?;
        let ordered = totally_ordered_tables(&self.client).await?;
        Ok(tables
            .into_iter()
            .map(|t| SourceTable {
                totally_ordered: ordered.contains(&(t.schema.clone(), t.name.clone())),
                schema: t,
            })
            .collect())
    }

    async fn plan(&self, table: &TableSchema, chunk_rows: u64) -> Result<Vec<Chunk>, Error> {
        snapshot::plan(&self.client, table, chunk_rows).await
    }

    async fn snapshot(&self) -> Result<PgSnapshot, Error> {
        slot::plain_snapshot(self.db).await
    }

    async fn read_snapshot(
        &self,
        snapshot: &PgSnapshot,
        work: Vec<Work>,
        readers: Readers,
    ) -> Result<(), Error> {
        snapshot::read(
            self.db,
            snapshot.name(),
            &snapshot.position().to_string(),
            work,
            readers.workers,
            readers.items,
            readers.shutdown,
            readers.lead,
        )
        .await
    }

    async fn open_changes(
        &self,
        checkpoint: Option<&ExporterCheckpoint>,
        tables: &[Arc<TableEncoder>],
        export_snapshot: bool,
    ) -> Result<Opened<PgSnapshot, PgChanges>, Error> {
        slot::open(self, checkpoint, tables, export_snapshot).await
    }

    async fn resume_changes(&self, from: Lsn) -> Result<PgChanges, Error> {
        slot::connect(self.db, self.slot, self.publication, from).await
    }

    async fn write_stop(&self) -> Result<String, Error> {
        write_stop(&self.client, self.slot, self.stream).await
    }

    async fn sequences(&self) -> Result<Vec<SequenceValue>, Error> {
        sequences(&self.client, &self.db.schemas).await
    }
}
