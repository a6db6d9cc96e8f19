//! ferry-importer: consumes a stream in the consumer group of its destination and applies
//! it to that database, exactly once (DESIGN.md §4, §5).
//!
//! Exactly once rests on three rules:
//!
//! 1. Every batch writes its rows, its partitions' positions (next offset, last applied
//!    VSN) and its per-table counts in ONE destination transaction (`sink::Sink`,
//!    `sink::postgres::positions`).
//! 2. On every partition assignment the consumer is positioned at the offsets stored in
//!    the destination, never at Kafka's committed offsets (`consumer`); positions move
//!    by compare-and-set, so an importer that lost a partition in a rebalance cannot
//!    write it again.
//! 3. Records below the stored offset, and events whose VSN is not above the partition's
//!    last applied VSN, are skipped; apply is idempotent anyway (`sink::postgres`).
//!
//! Kafka offsets are committed, for monitoring and the exporter's snapshot lead only, at
//! most every 200 ms: the newest each destination commit reached.
//! Any number of importer processes may share a group; partitions move between them
//! with nothing lost or applied twice. Inside a process, `importer.workers` apply tasks
//! share the assigned partitions, each with its own connection (`worker`).

mod consumer;
mod error;
mod event;
mod progress;
pub mod replay;
mod sink;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_shared::catalog::TableName;
use ferry_shared::codec::EventDecoder;
use ferry_shared::config::{Config, DatabaseConfig};
use ferry_shared::position::Vsn;
use ferry_shared::registry::{RegistryClient, RegistryError};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::{Destination, Stream, Topics};
use tokio_postgres::Client;

pub use error::Error;
pub use progress::{importer_heartbeat_key as heartbeat_key, ImporterHeartbeat, PartitionPosition};
pub use sink::Counts;

use consumer::{Command, ConsumerThread, Item};
use error::Failure;
use ferry_shared::error_policy::{Backoff, ErrorClass};
use sink::postgres::{self as pg, ConnectionTask, PgSink};
use worker::Pool;

/// Runs the importer of the target (the source stream applied to the target) until
/// `shutdown` fires or a definite error stops it.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    run_for(Destination::Target, config, shutdown).await
}

/// The stream an importer of `destination` applies before any cutover (`None`: it
/// waits for the coordinator). After a cutover the migration status record says.
pub fn stream_for(destination: Destination) -> Option<Stream> {
    ferry_shared::state::ImporterDirectives::default().get(destination)
}

/// Runs the importer writing to `destination` (consumer group
/// `<prefix>.import.<destination>`) until `shutdown` fires (returns `Ok` after the
/// in-flight batch is committed), the migration ends, or a definite error stops it.
///
/// Which stream it applies comes from the migration status record in `_state`
/// ([`ferry_shared::state`]): the source stream before cutover; after a cutover with
/// fall-forward or fall-back the coordinator moves the source-replica's or the source's
/// importer to the target stream, only once it applied every event of the source
/// stream. While it has no stream to apply, it waits (phase `standby`).
///
/// An error it stops on is also its last heartbeat (phase `failed`, with the error) and
/// an error record of its own in `_status`, so that `ferry cutover status`, the status
/// page and `/metrics` show it where the operator looks, after the process exited too,
/// until an importer of this destination runs successfully again.
pub async fn run_for(
    destination: Destination,
    config: Config,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let started_at_ms = ferry_shared::clock::now_ms();
    let result = run_destination(destination, &config, shutdown).await;
    match &result {
        // The broker refused this client: no heartbeat can reach it either.
        Err(Error::KafkaAccess(_)) | Ok(()) => {}
        Err(e) => {
            progress::send_failure(
                &config,
                destination,
                e.class(),
                &ferry_shared::process::error_chain(e),
                started_at_ms,
            )
            .await
        }
    }
    result
}

async fn run_destination(
    destination: Destination,
    config: &Config,
    mut shutdown: Shutdown,
) -> Result<(), Error> {
    let config = config.clone();
    let db = config.require_database(destination)?.clone();
    let topics = Topics::new(config.migration.topic_prefix());
    let group = topics.import_group(destination);
    let registry = RegistryClient::from_config(&config)
        .map_err(|e| Error::Definite(format!("schema registry: {e}")))?;
    ferry_shared::kafka_access::check(&config.kafka).await?;

    // Fail at start, with the fix, when the destination can't be written as required.
    if db.engine == ferry_shared::config::Engine::Yugabytedb {
        yugabytedb_preflight(&config, &db, destination).await?;
    }
    let (client, conn) = connect_destination(&db, destination)
        .await
        .map_err(|f| match f {
            Connected::Start(e) => e,
            Connected::Later(f) => Error::Definite(f.to_string()),
        })?;
    client.batch_execute(pg::SETUP_SQL).await.map_err(|e| {
        Error::Definite(format!(
            "creating the ferry_metadata schema on the {destination}: {}",
            ferry_shared::error_policy::describe_pg(&e)
        ))
    })?;
    tracing::info!(%group, database = %db.display(), "importer starting");

    let kafka = config.kafka.client_config();
    let mut state = ferry_shared::state::watch(&kafka, &topics.state(), shutdown.clone());
    let mut imp = Importer {
        destination,
        dest_name: destination.as_str().to_owned(),
        db,
        group,
        prefix: topics.prefix().to_owned(),
        kafka,
        decoder: EventDecoder::new(registry),
        batch_rows: config.importer.batch_rows.max(1) as usize,
        batch_max: Duration::from_millis(u64::from(config.importer.batch_max_ms.max(1))),
        workers: config.importer.workers.max(1) as usize,
        fetch_wait: Duration::from_millis(u64::from(config.importer.fetch_wait_ms)),
        client,
        conn,
        totals: BTreeMap::new(),
        backoff: Backoff::new(),
        progress: progress::Progress::new(),
        heartbeats: config.kafka.client_config().create().ok(),
        status_topic: topics.status(),
        stream: None,
    };
    if ferry_shared::state::first_view(&mut state, &mut shutdown)
        .await
        .is_none()
    {
        imp.conn.abort();
        return Ok(());
    }
    loop {
        let msr = state
            .borrow()
            .as_ref()
            .map(|v| v.msr.clone())
            .unwrap_or_default();
        if msr.ended_at_ms.is_some() {
            imp.conn.abort();
            imp.stream = None;
            imp.report_phase("stopped").await;
            tracing::info!("the migration was ended (ferry end migration); the importer stops");
            return Ok(());
        }
        let Some(stream) = msr.importers.get(destination) else {
            imp.stream = None;
            if !imp.standby(&mut state, &mut shutdown).await {
                imp.conn.abort();
                return Ok(());
            }
            continue;
        };
        imp.stream = Some(stream);
        // Seen at once: a restarted instance replaces the failure it had reported.
        imp.report_phase("applying").await;
        let result = imp.session(stream, &mut shutdown, &mut state).await;
        match result {
            Ok(SessionEnd::Shutdown) => {
                imp.conn.abort();
                tracing::info!("importer stopped");
                return Ok(());
            }
            Ok(SessionEnd::Redirected) => {
                tracing::info!(from = %stream, "the migration status record changed what this importer applies");
            }
            Err(Failure::Definite(message)) => {
                imp.conn.abort();
                return Err(Error::Definite(message));
            }
            Err(Failure::Fatal(message)) => {
                imp.conn.abort();
                return Err(Error::Fatal(message));
            }
            Err(f) => {
                let text = f.to_string();
                imp.progress.error = Some(ferry_shared::heartbeat::ServiceError::transient(&text));
                let delay = imp.backoff.next_delay(&text)?;
                tracing::warn!(error = %text, ?delay, "importer session ended; restarting from the positions stored in the destination");
                // Seen at once: retrying, with the error, until a session succeeds.
                imp.report_phase("retrying").await;
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => { imp.conn.abort(); return Ok(()); }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// How long a report may spend measuring the group's remaining events.
const GROUP_REMAINING_WITHIN: Duration = Duration::from_secs(3);

/// How a session ended without a failure.
enum SessionEnd {
    /// Shutdown was requested; the in-flight batch is committed.
    Shutdown,
    /// The migration status record changed this importer's stream (or ended the
    /// migration); the in-flight batch is committed.
    Redirected,
}

/// True when the directive for `destination` differs from `current` (or the migration
/// ended).
fn redirected(
    state: &tokio::sync::watch::Receiver<Option<ferry_shared::state::StateView>>,
    destination: Destination,
    current: Option<Stream>,
) -> bool {
    match state.borrow().as_ref() {
        Some(v) => v.msr.ended_at_ms.is_some() || v.msr.importers.get(destination) != current,
        None => false,
    }
}

/// Resolves when the `_state` watcher publishes a new view (never, once it stopped).
async fn state_changed(
    state: &mut tokio::sync::watch::Receiver<Option<ferry_shared::state::StateView>>,
) {
    if state.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

enum Connected {
    Start(Error),
    Later(Failure),
}

/// Opens an apply connection ([`pg::open_session`]); a role that may not switch off
/// triggers stops the importer at start.
/// YugabyteDB's preflight of a destination Ferry writes (version, settings, the role's
/// right to set `session_replication_role`, selected tables without a primary key):
/// every problem at once, before anything is created.
async fn yugabytedb_preflight(
    config: &Config,
    db: &DatabaseConfig,
    destination: Destination,
) -> Result<(), Error> {
    use ferry_shared::yugabytedb;
    let (client, conn) = db.connect().await?;
    let what = format!("the {destination}");
    let checked = async {
        let tables: Vec<TableName> = ferry_shared::catalog::list_tables(&client, &db.schemas)
            .await
            .map_err(|e| Error::Definite(format!("listing the tables of {what}: {e}")))?
            .into_iter()
            .filter(|t| config.migration.selects(&t.schema, &t.name))
            .collect();
        yugabytedb::preflight(&client, &what, &[yugabytedb::Use::Write], &tables)
            .await
            .map_err(|e| {
                Error::Definite(format!(
                    "checking {what}: {}",
                    ferry_shared::error_policy::describe_pg(&e)
                ))
            })
    };
    let problems = checked.await;
    conn.abort();
    let problems = problems?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Definite(yugabytedb::not_ready(&what, &problems)))
    }
}

async fn connect_destination(
    db: &DatabaseConfig,
    destination: Destination,
) -> Result<(Client, ConnectionTask), Connected> {
    pg::open_session(db).await.map_err(|e| match e {
        pg::SessionError::Connect(e) => Connected::Later(Failure::Transient(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_default()
        ))),
        pg::SessionError::ReplicationRole(source) => Connected::Start(Error::ReplicationRole {
            role: db.user.clone(),
            destination: destination.as_str().to_owned(),
            source,
        }),
        pg::SessionError::Setup(e) => {
            Connected::Later(pg::db_failure("setting up the destination session", &e))
        }
    })
}

/// A partition's position as last committed (for heartbeats).
#[derive(Debug)]
struct Part {
    /// `next_offset` stored in the destination.
    stored_next: i64,
    /// Last applied VSN.
    last_vsn: Vsn,
}

struct Importer {
    destination: Destination,
    dest_name: String,
    db: DatabaseConfig,
    group: String,
    prefix: String,
    kafka: rdkafka::ClientConfig,
    decoder: EventDecoder,
    batch_rows: usize,
    batch_max: Duration,
    /// Apply tasks per session (`importer.workers`).
    workers: usize,
    /// Fetch pacing at the end of the log (`importer.fetch_wait_ms`).
    fetch_wait: Duration,
    /// For setup and reports; the workers have their own connections.
    client: Client,
    conn: ConnectionTask,
    totals: BTreeMap<TableName, Counts>,
    backoff: Backoff,
    progress: progress::Progress,
    heartbeats: Option<rdkafka::producer::FutureProducer>,
    status_topic: String,
    /// The stream being applied (`None`: waiting).
    stream: Option<Stream>,
}

impl Importer {
    /// Waits while this importer has no stream to apply, sending heartbeats; false on
    /// shutdown.
    async fn standby(
        &mut self,
        state: &mut tokio::sync::watch::Receiver<Option<ferry_shared::state::StateView>>,
        shutdown: &mut Shutdown,
    ) -> bool {
        tracing::info!(destination = %self.destination, "no stream to apply yet; waiting for the coordinator (cutover)");
        loop {
            // Started and waiting as told: nothing left of an earlier failure.
            self.progress.succeeded();
            self.report_phase("standby").await;
            tokio::select! {
                biased;
                _ = shutdown.wait() => return false,
                _ = state_changed(state) => {
                    if redirected(state, self.destination, None) {
                        return true;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    }

    /// A heartbeat without positions.
    async fn report_phase(&mut self, phase: &str) {
        let total = total_i64(self.totals.values().map(Counts::total).sum());
        let beat = self.progress.report(
            &self.dest_name,
            &self.group,
            total,
            Vec::new(),
            None,
            phase,
            self.stream.map(Stream::as_str),
        );
        if let Some(producer) = &self.heartbeats {
            progress::send_heartbeat(producer, &self.status_topic, &beat);
        }
    }

    /// One consumer-group membership: from positions read on assignment until shutdown
    /// or a failure (after which the caller starts a new session).
    async fn session(
        &mut self,
        stream: Stream,
        shutdown: &mut Shutdown,
        state: &mut tokio::sync::watch::Receiver<Option<ferry_shared::state::StateView>>,
    ) -> Result<SessionEnd, Failure> {
        if self.client.is_closed() {
            self.conn.abort();
            let (client, conn) = connect_destination(&self.db, self.destination)
                .await
                .map_err(|c| match c {
                    Connected::Start(e) => Failure::Definite(e.to_string()),
                    Connected::Later(f) => f,
                })?;
            self.client = client;
            self.conn = conn;
        }
        let mut sinks = Vec::with_capacity(self.workers);
        for _ in 0..self.workers {
            match connect_destination(&self.db, self.destination).await {
                Ok((client, conn)) => sinks.push(PgSink::new(
                    client,
                    Some(conn),
                    &self.group,
                    &self.dest_name,
                )),
                Err(c) => {
                    // Dropping the sinks closes their connections.
                    drop(sinks);
                    return Err(match c {
                        Connected::Start(e) => Failure::Definite(e.to_string()),
                        Connected::Later(f) => f,
                    });
                }
            }
        }
        let mut pool = Pool::start(
            &worker::Setup {
                decoder: self.decoder.clone(),
                batch_rows: self.batch_rows,
                batch_max: self.batch_max,
            },
            sinks,
        );
        let (pos_client, pos_conn) = match self.db.connect().await {
            Ok(c) => c,
            Err(e) => {
                pool.stop().await;
                return Err(Failure::Transient(e.to_string()));
            }
        };
        let pattern = consumer::topic_pattern(&self.prefix, stream.as_str());
        tracing::info!(group = %self.group, %pattern, "applying the {stream} stream");
        let consumer = ConsumerThread::start(
            self.kafka.clone(),
            &self.group,
            &pattern,
            Arc::new(PgSink::new(pos_client, None, &self.group, &self.dest_name)),
            16,
            self.fetch_wait,
        );
        let mut consumer = match consumer {
            Ok(c) => c,
            Err(f) => {
                pool.stop().await;
                pos_conn.abort();
                return Err(f);
            }
        };
        let result = self
            .consume(&mut consumer, &mut pool, shutdown, state, stream)
            .await;
        consumer.stop().await;
        pool.stop().await;
        pos_conn.abort();
        result
    }

    /// Hands records to the workers in arrival order and follows their commits, until
    /// shutdown, a new stream or a failure. Whatever ends the session, the workers first
    /// write what they hold (except on a failure, which restarts from stored positions).
    async fn consume(
        &mut self,
        consumer: &mut ConsumerThread,
        pool: &mut Pool,
        shutdown: &mut Shutdown,
        state: &mut tokio::sync::watch::Receiver<Option<ferry_shared::state::StateView>>,
        stream: Stream,
    ) -> Result<SessionEnd, Failure> {
        let mut parts: HashMap<(String, i32), Part> = HashMap::new();
        let mut last_report = Instant::now();
        loop {
            let item = tokio::select! {
                biased;
                _ = shutdown.wait() => {
                    pool.flush(false).await?;
                    self.committed_all(pool, &mut parts, consumer)?;
                    return Ok(SessionEnd::Shutdown);
                }
                _ = state_changed(state) => {
                    if redirected(state, self.destination, Some(stream)) {
                        pool.flush(false).await?;
                        self.committed_all(pool, &mut parts, consumer)?;
                        self.report(&parts).await;
                        return Ok(SessionEnd::Redirected);
                    }
                    continue;
                }
                c = pool.committed() => {
                    self.committed(c?, &mut parts, consumer);
                    continue;
                }
                item = consumer.items.recv() => item,
            };
            match item {
                None => {
                    return Err(Failure::Transient(
                        "the kafka consumer thread stopped".into(),
                    ))
                }
                Some(Item::Failed(f)) => return Err(f),
                Some(Item::Watermarks(highs)) => {
                    self.progress.highs = highs.into_iter().map(|(t, p, h)| ((t, p), h)).collect();
                    self.progress.sample();
                }
                Some(Item::Revoked) => {
                    pool.flush(true).await?;
                    self.committed_all(pool, &mut parts, consumer)?;
                    parts.clear();
                }
                Some(Item::Assigned(positions)) => {
                    for p in &positions {
                        parts.insert(
                            (p.topic.clone(), p.partition),
                            Part {
                                stored_next: p.next_offset,
                                last_vsn: p.last_vsn,
                            },
                        );
                    }
                    pool.assign(positions).await?;
                }
                Some(Item::Records { records, caught_up }) => {
                    pool.records(records, caught_up).await?
                }
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                // Ten seconds of a session without a failure (an idle, caught-up
                // importer commits nothing): it runs successfully.
                self.progress.succeeded();
                self.report(&parts).await;
            }
        }
    }

    /// Takes in every commit the workers reported so far.
    fn committed_all(
        &mut self,
        pool: &mut Pool,
        parts: &mut HashMap<(String, i32), Part>,
        consumer: &ConsumerThread,
    ) -> Result<(), Failure> {
        for c in pool.drain()? {
            self.committed(c, parts, consumer);
        }
        Ok(())
    }

    /// A worker committed: positions for heartbeats, Kafka's offsets (monitoring only),
    /// totals.
    fn committed(
        &mut self,
        c: worker::Committed,
        parts: &mut HashMap<(String, i32), Part>,
        consumer: &ConsumerThread,
    ) {
        self.backoff = Backoff::new();
        self.progress.succeeded();
        let mut commit = Vec::with_capacity(c.positions.len());
        for new in c.positions {
            if let Some(p) = parts.get_mut(&(new.topic.clone(), new.partition)) {
                p.stored_next = new.next_offset;
                p.last_vsn = new.last_vsn;
            }
            commit.push((new.topic, new.partition, new.next_offset));
        }
        let _ = consumer.commands.send(Command::Commit(commit));
        self.progress.binary_copy_rows += c.applied.binary_copy_rows as u64;
        self.progress.text_copy_rows += c.applied.text_copy_rows as u64;
        for (name, n) in c.counts {
            self.progress.this_run += n.total();
            self.totals.entry(name).or_default().merge(&n);
        }
    }

    /// What the whole group has left: every partition's end minus the position stored in
    /// the destination by whichever replica applied it (the log start for a partition
    /// none applied yet), over every table topic of the stream. `None` when the
    /// positions or the ends cannot be read within a few seconds (the apply loop waits
    /// at most that long; the next report tries again).
    async fn group_remaining(&self, parts: &HashMap<(String, i32), Part>) -> Option<i64> {
        let stream = self.stream?;
        let measure = async {
            let mut stored: HashMap<(String, i32), i64> =
                ferry_shared::metadata::positions(&self.client, &self.group)
                    .await
                    .ok()?
                    .into_iter()
                    .map(|p| ((p.topic, p.partition), p.next_offset))
                    .collect();
            for ((topic, partition), p) in parts {
                stored.insert((topic.clone(), *partition), p.stored_next);
            }
            let prefix = format!("{}.{}.", self.prefix, stream);
            let ends = ferry_shared::kafka::watermarks_with_prefix(
                &self.kafka,
                &prefix,
                GROUP_REMAINING_WITHIN,
            )
            .await
            .ok()?;
            let mut remaining = 0i64;
            for (topic, marks) in &ends {
                for (partition, (low, high)) in marks.iter().enumerate() {
                    let at = i32::try_from(partition)
                        .ok()
                        .and_then(|p| stored.get(&(topic.clone(), p)).copied())
                        .unwrap_or(*low);
                    remaining += (high - at).max(0);
                }
            }
            Some(remaining)
        };
        tokio::time::timeout(GROUP_REMAINING_WITHIN, measure)
            .await
            .ok()
            .flatten()
    }

    /// Shows the metrics and sends a heartbeat.
    async fn report(&mut self, parts: &HashMap<(String, i32), Part>) {
        let total = total_i64(
            match ferry_shared::metadata::total_applied(&self.client, &self.group).await {
                Ok(total) => total,
                Err(_) => self.totals.values().map(Counts::total).sum(),
            },
        );
        let mut positions: Vec<progress::PartitionPosition> = parts
            .iter()
            .map(|((topic, partition), p)| progress::PartitionPosition {
                topic: topic.clone(),
                partition: *partition,
                next_offset: p.stored_next,
                last_vsn: p.last_vsn.0,
            })
            .collect();
        positions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let group_remaining = self.group_remaining(parts).await;
        let beat = self.progress.report(
            &self.dest_name,
            &self.group,
            total,
            positions,
            group_remaining,
            "applying",
            self.stream.map(Stream::as_str),
        );
        if let Some(producer) = &self.heartbeats {
            progress::send_heartbeat(producer, &self.status_topic, &beat);
        }
    }
}

fn registry_failure(e: &RegistryError, at: &str) -> Failure {
    match ferry_shared::error_policy::classify_registry(e) {
        ErrorClass::Transient => Failure::Transient(format!("reading record {at}: {e}")),
        _ => Failure::Definite(format!(
            "record {at} is not a Ferry change event Ferry can read: {e}; check the topic's producer and the schema registry"
        )),
    }
}

/// A count as the heartbeat's `bigint`-sized field carries it.
fn total_i64(total: u64) -> i64 {
    i64::try_from(total).unwrap_or(i64::MAX)
}
