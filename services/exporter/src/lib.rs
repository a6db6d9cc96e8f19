//! ferry-exporter: reads one database (a consistent snapshot, then every change) and
//! produces a stream to Kafka, one topic per table, stamped with VSNs: the `source`
//! stream from the source database, or the `target` stream from the target after a
//! cutover ([`run_for`]).
//!
//! Start-up order and why (DESIGN.md §4a, §5, §6):
//!
//! 0. the migration status record in `_state` ([`cutover`]): return when the stream was
//!    stopped for a cutover already or the migration ended; wait, creating nothing,
//!    while the stream is on standby;
//! 1. preflight: every problem with the database at once ([`check`]); the target
//!    stream first sets REPLICA IDENTITY FULL on its tables (only Ferry writes there);
//! 2. topics and schemas;
//! 3. the checkpoint from `_state` and the highest VSN already in the table topics;
//! 4. publication and slot: a new slot is created with an exported snapshot on the
//!    replication session, which stays open (and idle) while the snapshot is read, then
//!    starts streaming from the slot's consistent point — no gap, no overlap. An existing
//!    slot is never dropped or recreated: unfinished snapshot chunks are read from a
//!    newer snapshot and the slot's stream covers the difference. The target stream
//!    takes no snapshot;
//! 5. snapshot chunks get VSNs above every VSN already in the topics (and at or above
//!    the directive's first VSN); replayed changes get the checkpoint's VSNs, so each
//!    change keeps its VSN across restarts;
//! 6. a stop for a cutover ends the stream at a logical message and writes the final
//!    record ([`cutover`]).

pub mod check;
pub mod cutover;
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
use ferry_shared::kafka::{self, LagProbe, TopicSpec};
use ferry_shared::position::{Lsn, Vsn};
use ferry_shared::registry::{RegistryClient, RegistryError};
use ferry_shared::replay::{record_vsn, VSN_HEADER};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::state::{StreamDirective, StreamPhase};
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_shared::value::{session_settings_options, session_settings_sql, ValueError};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, TlsConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::event::{now_ms, TableEncoder};
use crate::sequencer::{Item, Pipeline, PipelineConfig, SequencerError};

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
    /// The broker refused this client (SASL login or TLS handshake).
    #[error(transparent)]
    KafkaAccess(#[from] ferry_shared::kafka_access::AccessError),
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
            Error::Registry { source, .. } => match source {
                RegistryError::Registry {
                    retriable: true, ..
                } => true,
                // The registry (often the coordinator) not answering for a while.
                RegistryError::Registry { message, .. } => {
                    message.contains("error sending request")
                        || message.contains("onnect")
                        || message.contains("timed out")
                }
                _ => false,
            },
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

pub use ferry_shared::topics::slot_name;

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

/// What `ferry prepare source` changes on the source: the `ALTER TABLE .. REPLICA
/// IDENTITY FULL` statements the preflight asks for, as `(schema.table, statement)`,
/// each run (in this order) unless `dry_run`. Running it again finds nothing to do.
pub async fn prepare_source(
    config: &Config,
    dry_run: bool,
) -> Result<Vec<(String, String)>, Error> {
    let source = config.require_source()?.clone();
    let (client, connection) = source.connect().await.map_err(Error::Connect)?;
    let _connection = AbortOnDrop(connection);
    let statements =
        check::replica_identity_statements(&client, &config.migration, &source.schemas).await?;
    if !dry_run {
        for (table, statement) in &statements {
            client
                .batch_execute(statement)
                .await
                .map_err(|e| Error::sql(format!("setting REPLICA IDENTITY FULL on {table}"), e))?;
        }
    }
    Ok(statements)
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

/// Runs the exporter of the source stream until `shutdown` fires, the stream is stopped
/// for a cutover, or a definite error stops it.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    run_for(Stream::Source, config, shutdown).await
}

/// Runs the exporter of `stream` (the source database for [`Stream::Source`], the
/// target for [`Stream::Target`]) as the migration status record directs
/// ([`cutover`]): waits while the stream is on standby, exports while it runs, stops
/// and writes the stream's final record when a cutover stops it, and returns at once
/// when the stream was stopped already or the migration ended.
///
/// The target stream takes no snapshot (whatever `exporter.export_type` says): the
/// target holds exactly what the source stream brought, so only its changes are new.
///
/// Transient failures (a server, the broker or the registry unreachable for a while)
/// restart the run from the stored checkpoint after a bounded backoff (1 s doubling to
/// 30 s, reset after 5 minutes without failure); definite errors return.
pub async fn run_for(stream: Stream, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    ferry_shared::kafka_access::check(&config.kafka).await?;
    let mut delay = Duration::from_secs(1);
    // One for the process: heartbeats carry its start and its last error across retries.
    let progress = Arc::new(progress::Progress::default());
    loop {
        let started = std::time::Instant::now();
        match run_once(stream, config.clone(), shutdown.clone(), progress.clone()).await {
            Err(e) if e.is_transient() && !shutdown.is_triggered() => {
                if started.elapsed() > Duration::from_secs(300) {
                    delay = Duration::from_secs(1);
                }
                tracing::warn!(error = %ferry_shared::process::error_chain(&e), ?delay, "exporter run failed; restarting from the stored checkpoint");
                let mut stop = shutdown.clone();
                tokio::select! {
                    biased;
                    _ = stop.wait() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

async fn run_once(
    stream: Stream,
    config: Config,
    shutdown: Shutdown,
    progress: Arc<progress::Progress>,
) -> Result<(), Error> {
    let db = match stream {
        Stream::Source => config.require_source()?.clone(),
        Stream::Target => config.require_target()?.clone(),
    };
    let export_type = match stream {
        Stream::Source => config.exporter.export_type,
        Stream::Target => ExportType::ChangesOnly,
    };
    let slot = slot_name(&config.migration.id, stream);
    let publication = slot.clone();
    let topics = Topics::new(config.migration.topic_prefix());
    let kafka_config = config.kafka.client_config();
    let replication = i32::from(config.migration.replication_factor);
    let state_specs: Vec<TopicSpec> = [topics.state(), topics.status()]
        .into_iter()
        .map(|name| TopicSpec {
            name,
            partitions: 1,
            replication,
            compacted: true,
        })
        .collect();
    kafka::ensure_topics(&kafka_config, &state_specs).await?;

    // The MSR: an ended migration stops everything below like a shutdown.
    let (inner_trigger, inner) = ferry_shared::shutdown::channel();
    let mut state = ferry_shared::state::watch(&kafka_config, &topics.state(), inner.clone());
    let mut follower = AbortOnDrop(tokio::spawn(cutover::follow_end(
        state.clone(),
        shutdown,
        inner_trigger,
    )));

    progress.set_phase("starting");
    let (report_stop, report_shutdown) = ferry_shared::shutdown::channel();
    let reporter = tokio::spawn(progress::report(
        progress.clone(),
        kafka_config.clone(),
        topics.status(),
        stream,
        report_shutdown,
    ));
    let mut waiting = inner.clone();
    let result = match cutover::wait_to_run(stream, &mut state, &mut waiting, &progress).await {
        cutover::Start::Return => Ok(()),
        cutover::Start::Run(directive) => {
            progress.set_phase("starting");
            export(Export {
                stream,
                export_type,
                config: &config,
                db: &db,
                slot: &slot,
                publication: &publication,
                topics: &topics,
                directive,
                state,
                shutdown: inner.clone(),
                progress: progress.clone(),
            })
            .await
        }
    };
    if let Err(e) = &result {
        let message = ferry_shared::process::error_chain(e);
        progress.record_error(if e.is_transient() && !inner.is_triggered() {
            ferry_shared::checkpoint::ServiceError::transient(message)
        } else {
            ferry_shared::checkpoint::ServiceError::definite(message)
        });
    }
    report_stop.trigger();
    let _ = reporter.await;
    follower.0.abort();
    let _ = (&mut follower.0).await;
    result
}

/// Everything [`export`] needs.
struct Export<'a> {
    stream: Stream,
    export_type: ExportType,
    config: &'a Config,
    db: &'a DatabaseConfig,
    slot: &'a str,
    publication: &'a str,
    topics: &'a Topics,
    directive: StreamDirective,
    state: cutover::State,
    shutdown: Shutdown,
    progress: Arc<progress::Progress>,
}

async fn export(e: Export<'_>) -> Result<(), Error> {
    let Export {
        stream,
        export_type,
        config,
        db,
        slot,
        publication,
        topics,
        directive,
        state,
        shutdown,
        progress,
    } = e;
    let (client, connection) = db.connect().await.map_err(Error::Connect)?;
    let _connection = AbortOnDrop(connection);
    client
        .batch_execute(&session_settings_sql())
        .await
        .map_err(|e| Error::sql("setting the session", e))?;
    if stream == Stream::Target {
        // Until cutover only Ferry writes the target, so Ferry may set what its change
        // stream needs; the source is the operator's, and its preflight only reports.
        check::set_replica_identity_full(&client, &config.migration, &db.schemas).await?;
    }
    let tables = preflight(&client, config, db, slot).await?;

    // Topics and schemas.
    let kafka_config = config.kafka.client_config();
    let partitions = config.migration.partitions as i32;
    let replication = i32::from(config.migration.replication_factor);
    // Tables with unique or exclusion constraints besides the primary key get one
    // partition: events on different keys can then never be applied out of order, so
    // a value freed by one row and taken by another arrives in the order it happened
    // (DESIGN.md §4a, the simple and correct option).
    let ordered = totally_ordered_tables(&client).await?;
    let specs: Vec<TopicSpec> = tables
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
    let counts = kafka::ensure_topics(&kafka_config, &specs).await?;
    let registry = RegistryClient::from_config(config).map_err(|e| Error::Registry {
        table: "-".into(),
        source: e,
    })?;
    let mut encoders = Vec::with_capacity(tables.len());
    let mut topic_names = Vec::with_capacity(tables.len());
    for (i, table) in tables.into_iter().enumerate() {
        let topic = topics.table(stream, &table.schema, &table.name);
        let n = counts.get(&topic).copied().unwrap_or(partitions);
        let name = table.to_string();
        let enc = TableEncoder::new(&registry, table, topic.clone(), i, n, db.database.clone())
            .await
            .map_err(|e| Error::Registry {
                table: name,
                source: e,
            })?;
        topic_names.push(topic);
        encoders.push(Arc::new(enc));
    }

    // Where we are.
    let stored = kafka::read_compacted(&kafka_config, &topics.state()).await?;
    let checkpoint = match stored.get(checkpoint_key(stream).as_bytes()) {
        Some(bytes) => Some(ExporterCheckpoint::from_json(bytes).map_err(|e| {
            Error::Internal(format!(
                "the checkpoint in {} is not readable: {e}",
                topics.state()
            ))
        })?),
        None => None,
    };
    let mut topics_max = 0u64;
    for topic in &topic_names {
        for r in kafka::last_records(&kafka_config, topic).await? {
            let header = r
                .headers
                .iter()
                .find(|(k, _)| k == VSN_HEADER)
                .map(|(_, v)| v.as_slice());
            if let Some(vsn) = record_vsn(header, r.value.as_deref()) {
                topics_max = topics_max.max(vsn.0);
            }
        }
    }
    // New VSNs go above everything in the topics and at or above the directive's first
    // VSN (the target stream continues above the source stream).
    let max_vsn = topics_max.max(directive.first_vsn.0.saturating_sub(1));
    tracing::info!(
        stream = %stream,
        tables = encoders.len(),
        max_vsn,
        first_vsn = %directive.first_vsn,
        checkpoint = checkpoint.is_some(),
        "exporter starting"
    );

    let ctx = Ctx {
        config,
        db,
        client: &client,
        slot,
        publication,
        encoders: &encoders,
        topic_names,
        state_topic: topics.state(),
        stream,
        shutdown,
        progress,
        state,
        topics_max,
    };
    match export_type {
        ExportType::SnapshotOnly => ctx.snapshot_only(checkpoint, max_vsn).await,
        ExportType::ChangesOnly | ExportType::SnapshotAndChanges => {
            ctx.with_changes(checkpoint, max_vsn, export_type).await
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Ctx<'a> {
    config: &'a Config,
    db: &'a DatabaseConfig,
    client: &'a Client,
    slot: &'a str,
    publication: &'a str,
    encoders: &'a [Arc<TableEncoder>],
    topic_names: Vec<String>,
    state_topic: String,
    stream: Stream,
    shutdown: Shutdown,
    progress: Arc<progress::Progress>,
    /// The watched `_state` (the MSR).
    state: cutover::State,
    /// The highest VSN in the stream's topics at start.
    topics_max: u64,
}

impl Ctx<'_> {
    fn pipeline(&self, start: ExporterCheckpoint) -> Result<Pipeline, Error> {
        Ok(Pipeline::start(PipelineConfig {
            kafka: self.config.kafka.client_config(),
            topics: self.topic_names.clone(),
            tables: self.encoders.iter().map(|e| e.name.clone()).collect(),
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
        let lead = self.lead_monitor();
        let read = snapshot::read(
            self.db,
            snapshot_name,
            &snapshot_lsn.to_string(),
            work,
            self.config.exporter.snapshot_workers as usize,
            pipeline.items.clone(),
            self.shutdown.clone(),
            lead.as_ref().map(|(rx, _)| rx.clone()),
        )
        .await;
        if let Some((_, task)) = lead {
            task.abort();
        }
        read?;
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

    /// With `exporter.snapshot_max_lead` set: a task reading, every 500 ms, what the
    /// importer groups of every destination committed on the stream's topics.
    /// Readers wait on it before each chunk ([`snapshot::Lead`]).
    fn lead_monitor(&self) -> Option<(watch::Receiver<snapshot::Lead>, JoinHandle<()>)> {
        let max = self.config.exporter.snapshot_max_lead;
        if max == 0 {
            return None;
        }
        let topics = Topics::new(self.config.migration.topic_prefix());
        let groups: Vec<String> = [
            Destination::Target,
            Destination::SourceReplica,
            Destination::Source,
        ]
        .into_iter()
        .map(|d| topics.import_group(d))
        .collect();
        let kafka = self.config.kafka.client_config();
        let names = self.topic_names.clone();
        let progress = self.progress.clone();
        let events_before = progress.events.load(std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = watch::channel(snapshot::Lead {
            max,
            measured: false,
            ends: 0,
            events_before,
            slowest: None,
            progress,
        });
        let task = tokio::spawn(async move {
            // What the topics hold: their ends when the snapshot starts (readers wait
            // for this first measurement, so nothing is produced meanwhile) plus what
            // this exporter stamped since, which it counts itself (a broker's end
            // offsets may lag).
            let mut ends = 0u64;
            for topic in &names {
                match kafka::watermarks(&kafka, topic).await {
                    Ok(w) => {
                        ends += w
                            .iter()
                            .map(|(_, h)| u64::try_from(*h).unwrap_or(0))
                            .sum::<u64>()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot measure the importers' lag; the snapshot does not wait for them");
                        return;
                    }
                }
            }
            let probe =
                tokio::task::spawn_blocking(move || LagProbe::new(&kafka, &groups, &names)).await;
            let probe = match probe {
                Ok(Ok(probe)) => Arc::new(probe),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot measure the importers' lag; the snapshot does not wait for them");
                    return;
                }
                Err(_) => return,
            };
            loop {
                let p = probe.clone();
                match tokio::task::spawn_blocking(move || p.committed()).await {
                    Ok(Ok(groups)) => {
                        let slowest = groups
                            .into_iter()
                            .filter_map(|(g, c)| c.map(|c| (g, c)))
                            .min_by_key(|(_, c)| *c);
                        tx.send_modify(|l| {
                            l.measured = true;
                            l.ends = ends;
                            l.slowest = slowest;
                        });
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "measuring the importers' lag");
                    }
                    Err(_) => return,
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Some((rx, task))
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
        let (client, connection) = self.db.connect().await.map_err(Error::Connect)?;
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
            if self.stop_requested() {
                // A snapshot has no changes to wait for: the final record is all a
                // cutover needs (its LSN is the checkpoint's, 0/0 without a stream).
                let lsn = start.lsn;
                return self.stopped(lsn, Some(start)).await;
            }
            tracing::info!("the snapshot is complete already; nothing to do");
            return Ok(());
        }
        start.next_vsn = Vsn(max_vsn.max(start.next_vsn.0.saturating_sub(1)) + 1);
        let (_holder, _conn, name, lsn) = self.plain_snapshot().await?;
        let work = self.plan(&mut start.snapshot).await?;
        let pipeline = self.pipeline(start)?;
        let read = self.read_snapshot(&pipeline, &name, lsn, work).await;
        let finished = pipeline.finish().await;
        let complete = read?;
        let last = finished?;
        if complete && self.stop_requested() {
            return self.stopped(lsn, last).await;
        }
        Ok(())
    }

    /// True when the MSR says this stream must stop.
    fn stop_requested(&self) -> bool {
        self.state
            .borrow()
            .as_ref()
            .is_some_and(|v| v.msr.stream(self.stream).phase == StreamPhase::Stop)
    }

    async fn with_changes(
        &self,
        checkpoint: Option<ExporterCheckpoint>,
        max_vsn: u64,
        export_type: ExportType,
    ) -> Result<(), Error> {
        use ferry_shared::config::SslMode;
        if matches!(
            self.db.sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        ) {
            return Err(Error::ReplicationTls(self.db.sslmode.as_str()));
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
                self.db.host.clone(),
                self.db.user.clone(),
                self.db.password.expose().to_owned(),
                self.db.database.clone(),
                self.slot.to_owned(),
                self.publication.to_owned(),
            )
            .with_port(self.db.port())
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
        let new_slot = slot_row.is_none();
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
        if new_slot && snap.is_none() {
            // A new slot without a snapshot: store its start at once, so that a restart
            // replays from the slot's consistent point with the same VSNs.
            pipeline
                .items
                .send(vec![Item::Commit { end_lsn: start.lsn }])
                .await
                .map_err(|_| Error::Internal("the stamper stopped".into()))?;
        }
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
        let (stop_tx, stop_rx) = watch::channel(None);
        let streamed = stream::run(
            repl,
            &by_name,
            self.slot,
            self.publication,
            pipeline.items.clone(),
            pipeline.durable.clone(),
            stop_rx,
            self.shutdown.clone(),
        );
        let request = cutover::request_stop(
            self.client,
            self.slot,
            self.stream,
            self.state.clone(),
            &self.progress,
            stop_tx,
        );
        tokio::pin!(streamed, request);
        let mut requested = false;
        let streamed = loop {
            tokio::select! {
                r = &mut streamed => break r,
                r = &mut request, if !requested => {
                    requested = true;
                    if let Err(e) = r {
                        break Err(e);
                    }
                }
            }
        };
        let finished = pipeline.finish().await;
        match (streamed, finished) {
            (Err(Error::Internal(_)), Err(e)) => Err(e.into()),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
            (Ok(None), Ok(_)) => Ok(()),
            (Ok(Some(lsn)), Ok(last)) => self.stopped(lsn, last).await,
        }
    }

    /// The stream was exported up to `lsn` and everything is acknowledged and
    /// checkpointed (`last`): writes the final record.
    async fn stopped(&self, lsn: Lsn, last: Option<ExporterCheckpoint>) -> Result<(), Error> {
        let kafka_config = self.config.kafka.client_config();
        let stamped = last.map_or(0, |cp| cp.next_vsn.0.saturating_sub(1));
        let last_vsn = Vsn(stamped.max(self.topics_max));
        let end_offsets = cutover::end_offsets(&kafka_config, &self.topic_names).await?;
        let sequences = cutover::sequences(self.client, &self.db.schemas).await?;
        let fin = cutover::final_record(self.stream, lsn, last_vsn, end_offsets, sequences);
        cutover::write_final(&kafka_config, &self.state_topic, &fin).await?;
        self.progress.set_phase("stopped");
        tracing::info!(
            stream = %self.stream,
            lsn = %lsn,
            last_vsn = %last_vsn,
            events_this_run = self.progress.events.load(std::sync::atomic::Ordering::Relaxed),
            sequences = fin.sequences.len(),
            "the {} stream stopped for the cutover: every change up to {lsn} is in kafka (last VSN {last_vsn}); final record written",
            self.stream
        );
        Ok(())
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
