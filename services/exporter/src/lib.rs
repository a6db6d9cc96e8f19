//! ferry-exporter: reads one database (a consistent snapshot, then every change) and
//! produces a stream to Kafka, one topic per table, stamped with VSNs: the `source`
//! stream from the source database, or the `target` stream from the target after a
//! cutover ([`run_for`]).
//!
//! Start-up order and why (DESIGN.md §4a, §5, §6):
//!
//! 0. the migration status record in `_state` (`cutover`): return when the stream was
//!    stopped for a cutover already or the migration ended; wait, creating nothing,
//!    while the stream is on standby;
//! 1. preflight: every problem with the database at once ([`check`]); the target
//!    stream first sets REPLICA IDENTITY FULL on its tables (only Ferry writes there);
//! 2. topics and schemas;
//! 3. the checkpoint from `_state` and the highest VSN already in the table topics;
//! 4. publication and slot (`postgres::slot`): a new slot is created with an exported
//!    snapshot on the replication session, which stays open (and idle) while the
//!    snapshot is read, then starts streaming from the slot's consistent point — no
//!    gap, no overlap. An existing slot is never dropped or recreated: unfinished
//!    snapshot chunks are read from a newer snapshot and the slot's stream covers the
//!    difference. The target stream takes no snapshot;
//! 5. snapshot chunks get VSNs above every VSN already in the topics (and at or above
//!    the directive's first VSN); replayed changes get the checkpoint's VSNs, so each
//!    change keeps its VSN across restarts;
//! 6. a stop for a cutover ends the stream at a logical message and writes the final
//!    record (`cutover`).
//!
//! Layout: this file runs, retries and sets up an export; `export` holds its phases
//! (snapshot, changes, stop) for any `source::Source`, the contract of a database
//! Ferry exports from; `postgres` is PostgreSQL's implementation (preflight, snapshot
//! reading, publication and slot, replication stream, pgoutput). The stamper, producer
//! and checkpoint writer (`sequencer`), the snapshot's lead over the importers
//! (`lead`), the encoder (`ferry_shared::codec`) and the reporter (`progress`) know no
//! engine.

mod cutover;
mod error;
mod export;
mod lead;
mod postgres;
mod progress;
mod sequencer;
mod source;

/// The source preflight, as `run` does it (also for `ferry analyze-schema`).
pub mod check {
    pub use crate::postgres::check::{preflight, CheckError, CheckInput, Problem};
    pub use crate::postgres::check_replication_connection;
}

/// A snapshot chunk's reading of a table's rows (binary or text COPY), for the tests
/// that hold the two readings to the same values.
#[doc(hidden)]
pub mod snapshot_rows {
    pub use crate::postgres::{copy_rows, reads_binary};
}

pub use error::Error;
pub use ferry_shared::topics::slot_name;
pub use postgres::pgoutput::DecodeError;
pub use sequencer::SequencerError;

use std::sync::Arc;
use std::time::Duration;

use ferry_shared::catalog::TableSchema;
use ferry_shared::checkpoint::{checkpoint_key, ExporterCheckpoint};
use ferry_shared::config::{Config, DatabaseConfig, ExportType};
use ferry_shared::error_policy::Backoff;
use ferry_shared::kafka::{self, TopicSpec};
use ferry_shared::registry::RegistryClient;
use ferry_shared::replay::{record_vsn, VSN_HEADER};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::state::StreamDirective;
use ferry_shared::topics::{Stream, Topics};

use crate::postgres::PgSource;
use crate::source::Source;
use ferry_shared::codec::TableEncoder;

/// Checks the source exactly as `run` does before it creates anything (`ferry
/// analyze-schema`): returns the selected tables with how each column travels, or every
/// problem at once with its fix. Changes nothing on the source.
pub async fn analyze(config: &Config) -> Result<Vec<TableSchema>, Error> {
    let source = config.require_source()?.clone();
    let slot = slot_name(&config.migration.id, Stream::Source);
    let (client, _connection) = postgres::session(&source).await?;
    postgres::preflight(&client, config, &source, &slot).await
}

/// What `ferry prepare source` changes on the source: the table of cutover stop
/// markers (`ferry_metadata.stop_markers`) when it is missing, then the `ALTER TABLE ..
/// REPLICA IDENTITY FULL` statements the preflight asks for, as `(object, statement)`,
/// each run (in this order) unless `dry_run`. Running it again finds nothing to do.
pub async fn prepare_source(
    config: &Config,
    dry_run: bool,
) -> Result<Vec<(String, String)>, Error> {
    let source = config.require_source()?.clone();
    let (client, connection) = source.connect().await.map_err(Error::Connect)?;
    let _connection = AbortOnDrop(connection);
    let mut statements =
        postgres::check::replica_identity_statements(&client, &config.migration, &source.schemas)
            .await?;
    // The table whose rows mark where a cutover stops the stream: made here by the
    // operator's role when the exporter's may not create it (it needs CREATE on the
    // database otherwise).
    let markers: bool = client
        .query_one(
            "SELECT to_regclass('ferry_metadata.stop_markers') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| Error::sql("looking for ferry_metadata.stop_markers", e))?
        .get(0);
    if !markers {
        let create: Vec<&str> = ferry_shared::metadata::STOP_MARKERS_SETUP_SQL
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("SET "))
            .collect();
        statements.insert(
            0,
            (
                "ferry_metadata.stop_markers".to_owned(),
                format!(
                    "{} ALTER TABLE ferry_metadata.stop_markers REPLICA IDENTITY FULL",
                    create.join(" ")
                ),
            ),
        );
    }
    if !dry_run {
        for (table, statement) in &statements {
            client
                .batch_execute(statement)
                .await
                .map_err(|e| Error::sql(format!("preparing {table}"), e))?;
        }
    }
    Ok(statements)
}

/// Runs the exporter of the source stream until `shutdown` fires, the stream is stopped
/// for a cutover, or a definite error stops it.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    run_for(Stream::Source, config, shutdown).await
}

/// Runs the exporter of `stream` (the source database for [`Stream::Source`], the
/// target for [`Stream::Target`]) as the migration status record directs
/// (`cutover`): waits while the stream is on standby, exports while it runs, stops
/// and writes the stream's final record when a cutover stops it, and returns at once
/// when the stream was stopped already or the migration ended.
///
/// The target stream takes no snapshot (whatever `exporter.export_type` says): the
/// target holds exactly what the source stream brought, so only its changes are new.
///
/// Transient failures (a server, the broker or the registry unreachable for a while)
/// restart the run from the stored checkpoint after a bounded backoff (1 s doubling to
/// 30 s, reset after 5 minutes without failure), reported as `retrying` with the error;
/// definite and fatal errors return, written to `_status` as an error record first (a
/// restarted exporter's heartbeats do not overwrite it), so that status shows it until
/// an exporter of this stream runs successfully again.
pub async fn run_for(stream: Stream, config: Config, shutdown: Shutdown) -> Result<(), Error> {
    ferry_shared::kafka_access::check(&config.kafka).await?;
    let result = run_retrying(stream, &config, shutdown).await;
    // A transient error comes back only when a shutdown cut a run short: nothing to
    // report.
    if let Some(e) = result.as_ref().err().filter(|e| !e.is_transient()) {
        let topics = Topics::new(config.migration.topic_prefix());
        let record = ferry_shared::heartbeat::ErrorRecord {
            role: "exporter".into(),
            unit: stream.as_str().to_owned(),
            instance: ferry_shared::heartbeat::instance_name(),
            error: ferry_shared::heartbeat::ServiceError::of(
                e.class(),
                ferry_shared::process::error_chain(e),
            ),
        };
        let written = ferry_shared::heartbeat::publish_error(
            &config.kafka.client_config(),
            &topics.status(),
            &record,
            Duration::from_secs(10),
        )
        .await;
        if !written {
            tracing::warn!(
                "the error could not be written to {}: ferry cutover status will not show it",
                topics.status()
            );
        }
    }
    result
}

/// [`run_for`]'s runs, restarted after transient failures.
async fn run_retrying(stream: Stream, config: &Config, shutdown: Shutdown) -> Result<(), Error> {
    let mut backoff = Backoff::starting_at(Duration::from_secs(1));
    // One for the process: heartbeats carry its start and its last error across retries.
    let progress = Arc::new(progress::Progress::default());
    loop {
        let started = std::time::Instant::now();
        match run_once(stream, config.clone(), shutdown.clone(), progress.clone()).await {
            Err(e) if e.is_transient() && !shutdown.is_triggered() => {
                backoff.reset_if_quiet(started.elapsed(), Duration::from_secs(300));
                let delay = backoff.delay();
                tracing::warn!(error = %ferry_shared::process::error_chain(&e), ?delay, "exporter run failed; restarting from the stored checkpoint");
                let mut stop = shutdown.clone();
                tokio::select! {
                    biased;
                    _ = stop.wait() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
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
    let state_specs = kafka::state_topic_specs(&topics, replication);
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
        use ferry_shared::error_policy::ErrorClass;
        let message = ferry_shared::process::error_chain(e);
        let class = match e.class() {
            ErrorClass::Transient if !inner.is_triggered() => ErrorClass::Transient,
            ErrorClass::Fatal => ErrorClass::Fatal,
            _ => ErrorClass::Definite,
        };
        progress.record_error(ferry_shared::heartbeat::ServiceError::of(class, message));
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
    let source = PgSource::connect(config, db, stream, slot, publication).await?;
    let tables = source.tables().await?;

    // Topics and schemas.
    let kafka_config = config.kafka.client_config();
    let partitions = config.migration.partitions as i32;
    let replication = i32::from(config.migration.replication_factor);
    // Tables with unique or exclusion constraints besides the primary key get one
    // partition: events on different keys can then never be applied out of order, so
    // a value freed by one row and taken by another arrives in the order it happened
    // (DESIGN.md §4a, the simple and correct option).
    let specs: Vec<TopicSpec> = tables
        .iter()
        .map(|t| TopicSpec {
            name: topics.table(stream, &t.schema.schema, &t.schema.name),
            partitions: if t.totally_ordered { 1 } else { partitions },
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
    for (i, table) in tables.into_iter().map(|t| t.schema).enumerate() {
        let topic = topics.table(stream, &table.schema, &table.name);
        // ensure_topics answers for every topic asked or fails; never guess a count (a
        // partition the topic lacks would have its records refused).
        let n = counts.get(&topic).copied().ok_or_else(|| {
            kafka::Error::msg(format!(
                "the broker's metadata did not list topic {topic} of table {table}"
            ))
        })?;
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

    let ctx = export::Ctx {
        config,
        source: &source,
        slot,
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

/// Aborts the task when dropped (a connection task, a follower).
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
