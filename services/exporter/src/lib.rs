//! ferry-exporter: reads the source database (a consistent snapshot, then every change)
//! and produces the `source` stream to Kafka, one topic per table, stamped with VSNs.
//!
//! Start-up order and why (DESIGN.md §4a, §5):
//!
//! 1. preflight: every problem with the source at once ([`check`]);
//! 2. topics and schemas;
//! 3. the checkpoint from `_state` and the highest VSN already in the table topics;
//! 4. publication and slot: a new slot is created with an exported snapshot on the
//!    replication session, which stays open (and idle) while the snapshot is read, then
//!    starts streaming from the slot's consistent point — no gap, no overlap. An existing
//!    slot is never dropped or recreated: unfinished snapshot chunks are read from a
//!    newer snapshot and the slot's stream covers the difference;
//! 5. snapshot chunks get VSNs above every VSN already in the topics; replayed changes
//!    get the checkpoint's VSNs, so each change keeps its VSN across restarts.

pub mod check;
pub mod event;
pub mod pgoutput;
pub mod progress;
pub mod sequencer;
pub mod snapshot;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_shared::catalog::{quote_ident, CatalogError};
use ferry_shared::checkpoint::{
    checkpoint_key, ExporterCheckpoint, SnapshotProgress, TableProgress,
};
use ferry_shared::config::{Config, ConfigError, ConnectError, DatabaseConfig, ExportType};
use ferry_shared::kafka::{self, TopicSpec};
use ferry_shared::position::{Lsn, Vsn};
use ferry_shared::registry::{RegistryClient, RegistryError};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::{Stream, Topics};
use ferry_shared::value::{session_settings_options, session_settings_sql, ValueError};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, TlsConfig};
use tokio_postgres::Client;

use crate::event::{now_ms, TableEncoder};
use crate::sequencer::{Item, Pipeline, PipelineConfig, SequencerError, VSN_HEADER};

/// What stops the exporter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration lacks something.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The source could not be reached.
    #[error(transparent)]
    Connect(ConnectError),
    /// The source is not ready.
    #[error(transparent)]
    Check(#[from] check::CheckError),
    /// A catalog read failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A statement failed.
    #[error("{what}")]
    Sql {
        /// What was being done.
        what: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    /// Schema registry.
    #[error("registering the schemas of table {table}")]
    Registry {
        /// `schema.table`.
        table: String,
        /// The error.
        #[source]
        source: RegistryError,
    },
    /// The stamper or checkpoint writer.
    #[error(transparent)]
    Sequencer(#[from] SequencerError),
    /// The replication session.
    #[error("{what}")]
    Replication {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: PgWireError,
    },
    /// The slot disappeared.
    #[error("replication slot \"{slot}\" does not exist (was it dropped?); changes since the last checkpoint cannot be recovered: end the migration (ferry end migration) and start it again, which takes a new snapshot")]
    SlotDropped {
        /// Slot name.
        slot: String,
    },
    /// The publication disappeared.
    #[error("publication \"{publication}\" does not exist (was it dropped?); the slot cannot decode changes without it: end the migration (ferry end migration) and start it again, which takes a new snapshot")]
    PublicationDropped {
        /// Publication name.
        publication: String,
    },
    /// TRUNCATE on a selected table.
    #[error("table {table} was truncated on the source; Ferry does not replicate TRUNCATE and stopped this stream: truncate the table on every destination, then end the migration and start it again, or exclude the table")]
    Truncate {
        /// `schema.table` (several, comma-separated).
        table: String,
    },
    /// DDL on a selected table.
    #[error("table {table} changed on the source (DDL): {detail}; Ferry does not replicate schema changes and stopped this stream: apply the same change on every destination, then end the migration and start it again")]
    SchemaChanged {
        /// `schema.table`.
        table: String,
        /// What differs.
        detail: String,
    },
    /// An unchanged TOAST value without the old row.
    #[error("table {table} column {column}: an update did not carry this unchanged large value and the old row is not available; run {fix} and start the migration of this table again")]
    UnchangedToast {
        /// `schema.table`.
        table: String,
        /// Column.
        column: String,
        /// The statement that fixes it.
        fix: String,
    },
    /// A malformed pgoutput message.
    #[error("decoding the change stream")]
    Decode(#[source] pgoutput::DecodeError),
    /// A value that does not parse.
    #[error("table {table} column {column}")]
    Value {
        /// `schema.table`.
        table: String,
        /// Column.
        column: String,
        /// The error.
        #[source]
        source: ValueError,
    },
    /// Avro encoding failed.
    #[error("encoding an event of table {table}")]
    Encode {
        /// `schema.table`.
        table: String,
        /// The error.
        #[source]
        source: ferry_shared::avro::AvroError,
    },
    /// The selected tables are not the ones the migration started with.
    #[error("publication \"{publication}\" does not include table {tables}: the table selection changed after the migration started; restore migration.include_tables / exclude_tables, or migrate the new tables in a new migration")]
    TablesChanged {
        /// Publication name.
        publication: String,
        /// `schema.table`, comma-separated.
        tables: String,
    },
    /// The replication connection cannot use TLS yet.
    #[error("source.sslmode is {0}, but the replication connection of this build cannot use TLS; set source.sslmode = \"disable\" or \"prefer\" on a trusted network, or use a build with TLS for replication")]
    ReplicationTls(&'static str),
    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True when retrying later may succeed (a server or the network was unavailable);
    /// false for definite errors that need the operator (a fact about the source, a
    /// table or the configuration), whose message says what to do.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect(_) | Error::Kafka(_) | Error::Sequencer(_) => true,
            Error::Replication { source, .. } => {
                matches!(source, PgWireError::Io(_) | PgWireError::Task(_))
            }
            Error::Sql { source, .. } => source.code().is_none(),
            Error::Registry { source, .. } => {
                matches!(
                    source,
                    RegistryError::Registry {
                        retriable: true,
                        ..
                    }
                )
            }
            _ => false,
        }
    }

    pub(crate) fn sql(what: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Sql {
            what: what.into(),
            source,
        }
    }
}

/// Slot and publication names of one stream of one migration.
pub fn slot_name(migration_id: &str, stream: Stream) -> String {
    let id: String = migration_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ferry_{id}_{}", stream.as_str())
}

/// The source preflight of `run`, on an open session with Ferry's settings.
async fn preflight(
    client: &Client,
    config: &Config,
    source: &DatabaseConfig,
    slot: &str,
) -> Result<Vec<ferry_shared::catalog::TableSchema>, Error> {
    Ok(check::preflight(
        client,
        &check::CheckInput {
            migration: &config.migration,
            schemas: &source.schemas,
            slot_name: slot,
            needs_replication: config.exporter.export_type != ExportType::SnapshotOnly,
        },
    )
    .await?)
}

/// Checks the source exactly as `run` does before it creates anything (`ferry
/// analyze-schema`): returns the selected tables with how each column travels, or every
/// problem at once with its fix. Changes nothing on the source.
pub async fn analyze(config: &Config) -> Result<Vec<ferry_shared::catalog::TableSchema>, Error> {
    let source = config.require_source()?.clone();
    let slot = slot_name(&config.migration.id, Stream::Source);
    let (client, connection) = source.connect().await.map_err(Error::Connect)?;
    let _connection = AbortOnDrop(connection);
    client
        .batch_execute(&session_settings_sql())
        .await
        .map_err(|e| Error::sql("setting the session", e))?;
    preflight(&client, config, &source, &slot).await
}

/// Tables (schema, name) with a unique or exclusion constraint besides the primary key.
async fn totally_ordered_tables(
    client: &Client,
) -> Result<std::collections::HashSet<(String, String)>, Error> {
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

/// Runs the exporter until `shutdown` fires or a definite error stops it.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let source = config.require_source()?.clone();
    let stream = Stream::Source;
    let export_type = config.exporter.export_type;
    let slot = slot_name(&config.migration.id, stream);
    let publication = slot.clone();

    let (client, connection) = source.connect().await.map_err(Error::Connect)?;
    let _connection = AbortOnDrop(connection);
    client
        .batch_execute(&session_settings_sql())
        .await
        .map_err(|e| Error::sql("setting the session", e))?;
    let tables = preflight(&client, &config, &source, &slot).await?;

    // Topics and schemas.
    let topics = Topics::new(config.migration.topic_prefix());
    let kafka_config = config.kafka.client_config();
    let partitions = config.migration.partitions as i32;
    let replication = i32::from(config.migration.replication_factor);
    // Tables with unique or exclusion constraints besides the primary key get one
    // partition: events on different keys can then never be applied out of order, so
    // a value freed by one row and taken by another arrives in the order it happened
    // (DESIGN.md §4a, the simple and correct option).
    let ordered = totally_ordered_tables(&client).await?;
    let mut specs: Vec<TopicSpec> = tables
        .iter()
        .map(|t| TopicSpec {
            name: topics.table(stream, &t.schema, &t.name),
            partitions: if ordered.contains(&(t.schema.clone(), t.name.clone())) {
                1
            } else {
                partitions
            },
            replication,
            compacted: false,
        })
        .collect();
    for name in [topics.state(), topics.status()] {
        specs.push(TopicSpec {
            name,
            partitions: 1,
            replication,
            compacted: true,
        });
    }
    let counts = kafka::ensure_topics(&kafka_config, &specs).await?;
    let auth = config.schema_registry.username.as_deref().map(|u| {
        (
            u,
            config.schema_registry.password.as_ref().map(|p| p.expose()),
        )
    });
    let registry =
        RegistryClient::new(&config.registry_url(), auth).map_err(|e| Error::Registry {
            table: "-".into(),
            source: e,
        })?;
    let mut encoders = Vec::with_capacity(tables.len());
    let mut topic_names = Vec::with_capacity(tables.len());
    for (i, table) in tables.into_iter().enumerate() {
        let topic = topics.table(stream, &table.schema, &table.name);
        let n = counts.get(&topic).copied().unwrap_or(partitions);
        let name = table.to_string();
        let enc = TableEncoder::new(
            &registry,
            table,
            topic.clone(),
            i,
            n,
            source.database.clone(),
        )
        .await
        .map_err(|e| Error::Registry {
            table: name,
            source: e,
        })?;
        topic_names.push(topic);
        encoders.push(Arc::new(enc));
    }

    // Where we are.
    let state = kafka::read_compacted(&kafka_config, &topics.state()).await?;
    let checkpoint = match state.get(checkpoint_key(stream).as_bytes()) {
        Some(bytes) => Some(ExporterCheckpoint::from_json(bytes).map_err(|e| {
            Error::Internal(format!(
                "the checkpoint in {} is not readable: {e}",
                topics.state()
            ))
        })?),
        None => None,
    };
    let mut max_vsn = 0u64;
    for topic in &topic_names {
        for r in kafka::last_records(&kafka_config, topic).await? {
            if let Some((_, v)) = r.headers.iter().find(|(k, _)| k == VSN_HEADER) {
                if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                    max_vsn = max_vsn.max(u64::from_be_bytes(b));
                }
            }
        }
    }
    tracing::info!(
        tables = encoders.len(),
        max_vsn,
        checkpoint = checkpoint.is_some(),
        "exporter starting"
    );

    let progress = Arc::new(progress::Progress::default());
    let (report_stop, report_shutdown) = ferry_shared::shutdown::channel();
    let reporter = tokio::spawn(progress::report(
        progress.clone(),
        kafka_config.clone(),
        topics.status(),
        stream,
        report_shutdown,
    ));
    let ctx = Ctx {
        config: &config,
        source: &source,
        client: &client,
        slot: &slot,
        publication: &publication,
        encoders: &encoders,
        topic_names,
        state_topic: topics.state(),
        stream,
        shutdown: shutdown.clone(),
        progress,
    };
    let result = match export_type {
        ExportType::SnapshotOnly => ctx.snapshot_only(checkpoint, max_vsn).await,
        ExportType::ChangesOnly | ExportType::SnapshotAndChanges => {
            ctx.with_changes(checkpoint, max_vsn, export_type).await
        }
    };
    report_stop.trigger();
    let _ = reporter.await;
    result
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Ctx<'a> {
    config: &'a Config,
    source: &'a DatabaseConfig,
    client: &'a Client,
    slot: &'a str,
    publication: &'a str,
    encoders: &'a [Arc<TableEncoder>],
    topic_names: Vec<String>,
    state_topic: String,
    stream: Stream,
    shutdown: Shutdown,
    progress: Arc<progress::Progress>,
}

impl Ctx<'_> {
    fn pipeline(&self, start: ExporterCheckpoint) -> Result<Pipeline, Error> {
        Ok(Pipeline::start(PipelineConfig {
            kafka: self.config.kafka.client_config(),
            topics: self.topic_names.clone(),
            state_topic: self.state_topic.clone(),
            stream: self.stream,
            start,
            progress: self.progress.clone(),
        })?)
    }

    /// Plans the tables that have no plan yet and lists the chunks not done.
    async fn plan(&self, progress: &mut SnapshotProgress) -> Result<Vec<snapshot::Work>, Error> {
        let mut work = Vec::new();
        for enc in self.encoders {
            if !progress.tables.contains_key(&enc.name) {
                let chunks =
                    snapshot::plan(self.client, &enc.table, self.config.exporter.chunk_rows)
                        .await?;
                let done = vec![false; chunks.len()];
                progress
                    .tables
                    .insert(enc.name.clone(), TableProgress { chunks, done });
            }
            if let Some(t) = progress.tables.get(&enc.name) {
                for (index, (chunk, done)) in t.chunks.iter().zip(&t.done).enumerate() {
                    if !done {
                        work.push(snapshot::Work {
                            table: enc.clone(),
                            index,
                            chunk: *chunk,
                        });
                    }
                }
            }
        }
        Ok(work)
    }

    async fn read_snapshot(
        &self,
        pipeline: &Pipeline,
        snapshot_name: &str,
        snapshot_lsn: Lsn,
        work: Vec<snapshot::Work>,
    ) -> Result<bool, Error> {
        let chunks = work.len();
        self.progress.set_phase("snapshot");
        tracing::info!(chunks, snapshot = snapshot_name, lsn = %snapshot_lsn, "reading the snapshot");
        snapshot::read(
            self.source,
            snapshot_name,
            &snapshot_lsn.to_string(),
            work,
            self.config.exporter.snapshot_workers as usize,
            pipeline.items.clone(),
            self.shutdown.clone(),
        )
        .await?;
        if self.shutdown.is_triggered() {
            return Ok(false);
        }
        pipeline
            .items
            .send(vec![Item::SnapshotDone])
            .await
            .map_err(|_| Error::Internal("the stamper stopped".into()))?;
        tracing::info!(chunks, "snapshot read");
        Ok(true)
    }

    /// A snapshot exported from an ordinary session (kept open while readers use it).
    async fn plain_snapshot(
        &self,
    ) -> Result<
        (
            Client,
            AbortOnDrop<Result<(), tokio_postgres::Error>>,
            String,
            Lsn,
        ),
        Error,
    > {
        let (client, connection) = self.source.connect().await.map_err(Error::Connect)?;
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
        Ok((client, AbortOnDrop(connection), name, lsn))
    }

    async fn snapshot_only(
        &self,
        checkpoint: Option<ExporterCheckpoint>,
        max_vsn: u64,
    ) -> Result<(), Error> {
        let mut start = checkpoint.unwrap_or_else(|| new_checkpoint(self.slot, Lsn::ZERO, max_vsn));
        if start.snapshot.done {
            tracing::info!("the snapshot is complete already; nothing to do");
            return Ok(());
        }
        start.next_vsn = Vsn(max_vsn.max(start.next_vsn.0.saturating_sub(1)) + 1);
        let (_holder, _conn, name, lsn) = self.plain_snapshot().await?;
        let work = self.plan(&mut start.snapshot).await?;
        let pipeline = self.pipeline(start)?;
        let read = self.read_snapshot(&pipeline, &name, lsn, work).await;
        let finished = pipeline.finish().await;
        read?;
        finished?;
        Ok(())
    }

    async fn with_changes(
        &self,
        checkpoint: Option<ExporterCheckpoint>,
        max_vsn: u64,
        export_type: ExportType,
    ) -> Result<(), Error> {
        use ferry_shared::config::SslMode;
        if matches!(
            self.source.sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        ) {
            return Err(Error::ReplicationTls(self.source.sslmode.as_str()));
        }
        let tables: Vec<String> = self.encoders.iter().map(|e| e.table.qualified()).collect();
        let pub_exists = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&self.publication],
            )
            .await
            .map_err(|e| Error::sql("looking up the publication", e))?
            .is_some();
        let slot_row = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, plugin FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(|e| Error::sql("looking up the replication slot", e))?;
        if let Some(cp) = &checkpoint {
            if cp.slot == self.slot && slot_row.is_none() {
                return Err(Error::SlotDropped {
                    slot: self.slot.to_owned(),
                });
            }
            if !pub_exists {
                return Err(Error::PublicationDropped {
                    publication: self.publication.to_owned(),
                });
            }
        }
        if !pub_exists {
            // Changes of partitions are published as changes of the selected
            // (partitioned) table, whose schema and topic Ferry knows (PostgreSQL 13+).
            let version: i32 = self
                .client
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .map_err(|e| Error::sql("reading the server version", e))?
                .get(0);
            let with = if version >= 130000 {
                " WITH (publish_via_partition_root = true)"
            } else {
                ""
            };
            self.client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {}{with}",
                    quote_ident(self.publication),
                    tables.join(", ")
                ))
                .await
                .map_err(|e| Error::sql(format!("creating publication {}", self.publication), e))?;
        } else {
            // A table selected now but missing from the publication would lose its
            // changes silently.
            let rows = self
                .client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&self.publication],
                )
                .await
                .map_err(|e| Error::sql("reading the publication's tables", e))?;
            let published: std::collections::HashSet<(String, String)> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let missing: Vec<String> = self
                .encoders
                .iter()
                .filter(|e| !published.contains(&(e.table.schema.clone(), e.table.name.clone())))
                .map(|e| e.name.clone())
                .collect();
            if !missing.is_empty() {
                return Err(Error::TablesChanged {
                    publication: self.publication.to_owned(),
                    tables: missing.join(", "),
                });
            }
        }

        let repl_config = |start: Lsn| {
            ReplicationConfig::new(
                self.source.host.clone(),
                self.source.user.clone(),
                self.source.password.expose().to_owned(),
                self.source.database.clone(),
                self.slot.to_owned(),
                self.publication.to_owned(),
            )
            .with_port(self.source.port())
            .with_tls(TlsConfig::disabled())
            .with_options(session_settings_options())
            .with_application_name("ferry-exporter")
            .with_status_interval(Duration::from_secs(1))
            .with_wakeup_interval(Duration::from_secs(1))
            .with_start_lsn(pgwire_replication::Lsn(start.0))
            .with_ack_lsn(pgwire_replication::Lsn(start.0))
        };
        let repl_err = |what: &str| {
            let what = what.to_owned();
            move |source| Error::Replication { what, source }
        };

        let mut holder = None;
        let (mut repl, mut start, snap) = match (slot_row, checkpoint) {
            (None, _) => {
                // A new slot, created on the session that will stream from it: its
                // exported snapshot lives until that session's next command,
                // START_REPLICATION, which is sent after the snapshot was read. The
                // stream then starts at the slot's consistent point: no gap, no overlap.
                let mut repl = ReplicationClient::connect_gated(repl_config(Lsn::ZERO))
                    .await
                    .map_err(repl_err("connecting for replication"))?;
                let export = export_type == ExportType::SnapshotAndChanges;
                let rows = repl
                    .simple_query(&format!(
                        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}",
                        quote_ident(self.slot),
                        if export {
                            "EXPORT_SNAPSHOT"
                        } else {
                            "NOEXPORT_SNAPSHOT"
                        }
                    ))
                    .await
                    .map_err(repl_err("creating the replication slot"))?;
                let row = rows.into_iter().next().unwrap_or_default();
                let text = |i: usize| {
                    row.get(i)
                        .and_then(|v| v.as_ref())
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                };
                let lsn: Lsn = text(1).and_then(|t| t.parse().ok()).ok_or_else(|| {
                    Error::Internal("CREATE_REPLICATION_SLOT returned no consistent point".into())
                })?;
                tracing::info!(slot = self.slot, lsn = %lsn, "replication slot created");
                let mut cp = new_checkpoint(self.slot, lsn, max_vsn);
                cp.snapshot.done = !export;
                let snap = if export {
                    text(2).map(|n| (n, lsn))
                } else {
                    None
                };
                (repl, cp, snap)
            }
            (Some(_), Some(cp)) if cp.snapshot.done => {
                // Replay from the checkpoint with its VSNs.
                let repl = ReplicationClient::connect_gated(repl_config(cp.lsn))
                    .await
                    .map_err(repl_err("connecting for replication"))?;
                (repl, cp, None)
            }
            (Some(row), cp) => {
                // The slot exists and the snapshot is not complete: redo what is
                // missing from a newer snapshot, with VSNs above everything in the
                // topics; the slot's stream (from its start) covers the difference.
                let slot_lsn: Option<String> = row.get(0);
                let slot_lsn: Lsn = slot_lsn.and_then(|t| t.parse().ok()).unwrap_or(Lsn::ZERO);
                let mut cp = cp.unwrap_or_else(|| new_checkpoint(self.slot, slot_lsn, max_vsn));
                cp.next_vsn = Vsn(max_vsn.max(cp.next_vsn.0.saturating_sub(1)) + 1);
                let mut snap = None;
                if export_type == ExportType::ChangesOnly {
                    cp.snapshot.done = true;
                } else {
                    let (c, conn, name, lsn) = self.plain_snapshot().await?;
                    holder = Some((c, conn));
                    snap = Some((name, lsn));
                }
                let repl = ReplicationClient::connect_gated(repl_config(cp.lsn))
                    .await
                    .map_err(repl_err("connecting for replication"))?;
                (repl, cp, snap)
            }
        };
        let work = match &snap {
            Some(_) => self.plan(&mut start.snapshot).await?,
            None => Vec::new(),
        };
        let pipeline = self.pipeline(start.clone())?;
        if let Some((name, lsn)) = &snap {
            let read = self.read_snapshot(&pipeline, name, *lsn, work).await;
            match read {
                Ok(true) => {
                    // No change may be stamped before the checkpoint saying the
                    // snapshot is complete is stored: otherwise a crash in between
                    // would redo snapshot chunks and then stamp the same changes
                    // again with other VSNs.
                    let mut written = pipeline.written.clone();
                    let mut shutdown = self.shutdown.clone();
                    let stored = tokio::select! {
                        biased;
                        _ = shutdown.wait() => false,
                        r = written.wait_for(|w| w.as_ref().is_some_and(|c| c.snapshot.done)) => r.is_ok(),
                    };
                    if !stored {
                        pipeline.finish().await?;
                        return Ok(());
                    }
                }
                Ok(false) => {
                    pipeline.finish().await?;
                    return Ok(());
                }
                Err(e) => {
                    let finished = pipeline.finish().await;
                    finished?;
                    return Err(e);
                }
            }
        }
        drop(holder);

        repl.start()
            .await
            .map_err(repl_err("starting replication"))?;
        if let Err(e) = repl.wait_started().await {
            let _ = pipeline.finish().await;
            return Err(stream::replication_error(e, self.slot, self.publication));
        }
        tracing::info!(slot = self.slot, lsn = %start.lsn, next_vsn = %start.next_vsn, "streaming changes");
        self.progress.set_phase("streaming");
        let by_name: HashMap<(String, String), Arc<TableEncoder>> = self
            .encoders
            .iter()
            .map(|e| ((e.table.schema.clone(), e.table.name.clone()), e.clone()))
            .collect();
        let streamed = stream::run(
            repl,
            &by_name,
            self.slot,
            self.publication,
            pipeline.items.clone(),
            pipeline.durable.clone(),
            self.shutdown.clone(),
        )
        .await;
        let finished = pipeline.finish().await;
        match (streamed, finished) {
            (Err(Error::Internal(_)), Err(e)) => Err(e.into()),
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
            (Ok(()), Ok(_)) => Ok(()),
        }
    }
}

fn new_checkpoint(slot: &str, lsn: Lsn, max_vsn: u64) -> ExporterCheckpoint {
    ExporterCheckpoint {
        slot: slot.to_owned(),
        lsn,
        next_vsn: Vsn(max_vsn + 1),
        snapshot: SnapshotProgress {
            done: false,
            tables: BTreeMap::new(),
        },
        counts: BTreeMap::new(),
        written_at_ms: now_ms(),
    }
}
