//! ferry-importer: consumes a stream in the consumer group of its destination and applies
//! it to that database, exactly once (DESIGN.md §4, §5).
//!
//! Exactly once rests on three rules:
//!
//! 1. Every batch writes its rows, its partitions' positions (next offset, last applied
//!    VSN) and its per-table counts in ONE destination transaction ([`metadata`]).
//! 2. On every partition assignment the consumer is positioned at the offsets stored in
//!    the destination, never at Kafka's committed offsets ([`consumer`]); positions move
//!    by compare-and-set, so an importer that lost a partition in a rebalance cannot
//!    write it again.
//! 3. Records below the stored offset, and events whose VSN is not above the partition's
//!    last applied VSN, are skipped; apply is idempotent anyway ([`apply`]).
//!
//! Kafka offsets are committed after each destination commit, for monitoring only.
//! Any number of importer processes may share a group; partitions move between them
//! with nothing lost or applied twice.

mod apply;
mod consumer;
mod error;
mod metadata;
mod progress;
pub mod replay;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_shared::avro::AvroType;
use ferry_shared::catalog::TableName;
use ferry_shared::config::{Config, DatabaseConfig};
use ferry_shared::position::Vsn;
use ferry_shared::registry::{EventDecoder, RegistryClient, RegistryError};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_shared::value::session_settings_sql;
use ferry_shared::value::Datum;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

pub use error::Error;
pub use metadata::Counts;
pub use progress::{importer_heartbeat_key as heartbeat_key, ImporterHeartbeat, PartitionPosition};

use apply::{Event, Tables};
use consumer::{Command, ConsumerThread, Item, Record};
use error::{Backoff, Failure};
use metadata::Stored;

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
pub async fn run_for(
    destination: Destination,
    config: Config,
    mut shutdown: Shutdown,
) -> Result<(), Error> {
    let db = match destination {
        Destination::Target => config.require_target()?,
        Destination::SourceReplica => config.require_source_replica()?,
        Destination::Source => config.require_source()?,
    }
    .clone();
    let topics = Topics::new(config.migration.topic_prefix());
    let group = topics.import_group(destination);
    let auth = config.schema_registry.username.as_deref().map(|u| {
        (
            u,
            config.schema_registry.password.as_ref().map(|p| p.expose()),
        )
    });
    let registry = RegistryClient::new(&config.registry_url(), auth)
        .map_err(|e| Error::Definite(format!("schema registry: {e}")))?;

    // Fail at start, with the fix, when the destination can't be written as required.
    let (client, conn) = connect_destination(&db, destination)
        .await
        .map_err(|f| match f {
            Connected::Start(e) => e,
            Connected::Later(f) => Error::Definite(f.to_string()),
        })?;
    client
        .batch_execute(metadata::SETUP_SQL)
        .await
        .map_err(|e| {
            Error::Definite(format!(
                "creating the ferry_metadata schema on the {destination}: {}",
                error::describe_pg(&e)
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
        client,
        conn,
        tables: Tables::default(),
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
            Err(f) => {
                let text = f.to_string();
                let delay = imp.backoff.next_delay(&text)?;
                tracing::warn!(error = %text, ?delay, "importer session ended; restarting from the positions stored in the destination");
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => { imp.conn.abort(); return Ok(()); }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

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

/// Opens an apply connection: Ferry's session settings, then
/// `session_replication_role = replica` so triggers and foreign keys don't fire.
async fn connect_destination(
    db: &DatabaseConfig,
    destination: Destination,
) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), Connected> {
    let (client, conn) = db.connect().await.map_err(|e| {
        Connected::Later(Failure::Transient(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_default()
        )))
    })?;
    let setup = async {
        client.batch_execute(&session_settings_sql()).await?;
        client
            .batch_execute("SET session_replication_role = replica")
            .await
    };
    match setup.await {
        Ok(()) => Ok((client, conn)),
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            conn.abort();
            Err(Connected::Start(Error::ReplicationRole {
                role: db.user.clone(),
                destination: destination.as_str().to_owned(),
                source: e,
            }))
        }
        Err(e) => {
            conn.abort();
            Err(Connected::Later(metadata::db_failure(
                "setting up the destination session",
                &e,
            )))
        }
    }
}

/// A partition's position as the applier tracks it.
#[derive(Debug)]
struct Part {
    /// `next_offset` stored in the destination (committed).
    stored_next: i64,
    /// The next offset to accept (past everything taken into the pending batch).
    expected: i64,
    /// Last VSN taken (applied or pending).
    last_vsn: Vsn,
}

/// Events and positions not yet written.
#[derive(Default)]
struct Batch {
    events: BTreeMap<TableName, Vec<Event>>,
    /// (topic, partition) -> (stored next offset it moves from, new position).
    positions: HashMap<(String, i32), (i64, Stored)>,
    records: usize,
    started: Option<Instant>,
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
    client: Client,
    conn: JoinHandle<Result<(), tokio_postgres::Error>>,
    tables: Tables,
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
        let total: i64 = self.totals.values().map(Counts::total).sum();
        let beat = self.progress.report(
            &self.dest_name,
            &self.group,
            total,
            Vec::new(),
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
        self.tables.clear();
        let (pos_client, pos_conn) = self
            .db
            .connect()
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let pattern = consumer::topic_pattern(&self.prefix, stream.as_str());
        tracing::info!(group = %self.group, %pattern, "applying the {stream} stream");
        let consumer = ConsumerThread::start(
            self.kafka.clone(),
            &self.group,
            &pattern,
            Arc::new(pos_client),
            self.batch_rows.min(10_000) * 2,
        )?;
        let mut consumer = consumer;
        let result = self.consume(&mut consumer, shutdown, state, stream).await;
        consumer.stop().await;
        pos_conn.abort();
        result
    }

    async fn consume(
        &mut self,
        consumer: &mut ConsumerThread,
        shutdown: &mut Shutdown,
        state: &mut tokio::sync::watch::Receiver<Option<ferry_shared::state::StateView>>,
        stream: Stream,
    ) -> Result<SessionEnd, Failure> {
        let mut parts: HashMap<(String, i32), Part> = HashMap::new();
        let mut batch = Batch::default();
        let mut last_report = Instant::now();
        loop {
            let deadline = batch
                .started
                .map(|s| tokio::time::Instant::from_std(s + self.batch_max));
            let item = tokio::select! {
                biased;
                _ = shutdown.wait() => {
                    self.flush(&mut batch, &mut parts, consumer).await?;
                    return Ok(SessionEnd::Shutdown);
                }
                _ = state_changed(state) => {
                    if redirected(state, self.destination, Some(stream)) {
                        self.flush(&mut batch, &mut parts, consumer).await?;
                        self.report(&parts).await;
                        return Ok(SessionEnd::Redirected);
                    }
                    continue;
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    self.flush(&mut batch, &mut parts, consumer).await?;
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
                    self.flush(&mut batch, &mut parts, consumer).await?;
                    parts.clear();
                }
                Some(Item::Assigned(positions)) => {
                    for p in positions {
                        tracing::debug!(topic = %p.topic, partition = p.partition, next_offset = p.next_offset, vsn = %p.last_vsn, "assigned");
                        parts.insert(
                            (p.topic, p.partition),
                            Part {
                                stored_next: p.next_offset,
                                expected: p.next_offset,
                                last_vsn: p.last_vsn,
                            },
                        );
                    }
                }
                Some(Item::Record(r)) => {
                    self.take(r, &mut parts, &mut batch).await?;
                    if batch.records >= self.batch_rows {
                        self.flush(&mut batch, &mut parts, consumer).await?;
                    }
                }
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                self.report(&parts).await;
            }
        }
    }

    /// Shows the metrics and sends a heartbeat.
    async fn report(&mut self, parts: &HashMap<(String, i32), Part>) {
        let total: i64 = match self
            .client
            .query_one(
                "SELECT coalesce(sum(snapshot_rows + inserts + updates + deletes), 0)::bigint \
                 FROM ferry_metadata.table_counts WHERE consumer_group = $1",
                &[&self.group],
            )
            .await
        {
            Ok(row) => row.get(0),
            Err(_) => self.totals.values().map(Counts::total).sum(),
        };
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
        let beat = self.progress.report(
            &self.dest_name,
            &self.group,
            total,
            positions,
            "applying",
            self.stream.map(Stream::as_str),
        );
        if let Some(producer) = &self.heartbeats {
            progress::send_heartbeat(producer, &self.status_topic, &beat);
        }
    }

    /// Takes one record into the batch, or skips it when it was applied already.
    async fn take(
        &mut self,
        r: Record,
        parts: &mut HashMap<(String, i32), Part>,
        batch: &mut Batch,
    ) -> Result<(), Failure> {
        let key = (r.topic, r.partition);
        let Some(part) = parts.get_mut(&key) else {
            return Ok(()); // not (or no longer) assigned here
        };
        if r.offset < part.expected {
            return Ok(()); // at or below the stored position: applied already
        }
        part.expected = r.offset + 1;
        let at = || format!("{}[{}]@{}", key.0, key.1, r.offset);
        if let Some(payload) = &r.payload {
            let decoded = self
                .decoder
                .decode_event(payload)
                .await
                .map_err(|e| registry_failure(&e, &at()))?;
            if decoded.vsn > part.last_vsn {
                part.last_vsn = decoded.vsn;
                let (key_type, key_values) = match &r.key {
                    Some(k) => {
                        let (ty, datum) = self
                            .decoder
                            .decode_datum(k)
                            .await
                            .map_err(|e| registry_failure(&e, &at()))?;
                        match (ty.as_ref(), datum) {
                            (AvroType::Record(rt), Datum::Record(values)) => (rt.clone(), values),
                            _ => {
                                return Err(Failure::Definite(format!(
                                "record {} has a key that is not a record; the stream is damaged",
                                at()
                            )))
                            }
                        }
                    }
                    None => {
                        return Err(Failure::Definite(format!(
                            "record {} has no key; the stream is damaged",
                            at()
                        )))
                    }
                };
                let table = TableName {
                    schema: decoded.source.schema.clone(),
                    name: decoded.source.table.clone(),
                };
                batch.events.entry(table.clone()).or_default().push(Event {
                    vsn: decoded.vsn,
                    op: decoded.op,
                    table,
                    row_type: decoded.row_type,
                    before: decoded.before,
                    after: decoded.after,
                    key_type,
                    key: key_values,
                });
            } else {
                tracing::debug!(record = %at(), vsn = %decoded.vsn, "skipping an event at or below the last applied vsn");
            }
        }
        let stored_next = part.stored_next;
        let new = Stored {
            topic: key.0.clone(),
            partition: key.1,
            next_offset: part.expected,
            last_vsn: part.last_vsn,
        };
        batch
            .positions
            .entry(key)
            .and_modify(|e| e.1 = new.clone())
            .or_insert((stored_next, new));
        batch.records += 1;
        batch.started.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Writes the batch, its positions and counts in one transaction, then commits the
    /// offsets to Kafka.
    async fn flush(
        &mut self,
        batch: &mut Batch,
        parts: &mut HashMap<(String, i32), Part>,
        consumer: &ConsumerThread,
    ) -> Result<(), Failure> {
        if batch.positions.is_empty() {
            *batch = Batch::default();
            return Ok(());
        }
        let mut b = std::mem::take(batch);
        let mut dest = BTreeMap::new();
        for (name, events) in &mut b.events {
            events.sort_by_key(|e| e.vsn);
            let first = events.first().map(|e| e.vsn).unwrap_or_default();
            let t = self
                .tables
                .get(&self.client, name, &self.dest_name, first)
                .await?;
            dest.insert(name.clone(), t);
        }
        let mut counts = BTreeMap::new();
        {
            let tx = self
                .client
                .transaction()
                .await
                .map_err(|e| metadata::db_failure("starting a transaction", &e))?;
            let mut positions: Vec<&(i64, Stored)> = b.positions.values().collect();
            positions.sort_by(|a, b| (&a.1.topic, a.1.partition).cmp(&(&b.1.topic, b.1.partition)));
            for (expected, new) in positions {
                metadata::advance(&tx, &self.group, *expected, new).await?;
            }
            let mut stage = 0u32;
            for (name, events) in &b.events {
                if let Some(t) = dest.get(name) {
                    apply::apply_table(&tx, t, &self.dest_name, events, &mut stage).await?;
                }
                let c = apply::count(events);
                metadata::add_counts(&tx, &self.group, &name.schema, &name.name, &c).await?;
                counts.insert(name.clone(), c);
            }
            tx.commit()
                .await
                .map_err(|e| metadata::db_failure("committing a batch", &e))?;
        }
        self.backoff = Backoff::new();
        let mut commit = Vec::with_capacity(b.positions.len());
        for (key, (_, new)) in b.positions {
            if let Some(p) = parts.get_mut(&key) {
                p.stored_next = new.next_offset;
            }
            commit.push((new.topic, new.partition, new.next_offset));
        }
        let _ = consumer.commands.send(Command::Commit(commit));
        for (name, c) in counts {
            self.progress.this_run += c.total() as u64;
            let t = self.totals.entry(name).or_default();
            t.snapshot_rows += c.snapshot_rows;
            t.inserts += c.inserts;
            t.updates += c.updates;
            t.deletes += c.deletes;
        }
        Ok(())
    }
}

fn registry_failure(e: &RegistryError, at: &str) -> Failure {
    match e {
        RegistryError::Registry {
            retriable: true, ..
        } => Failure::Transient(format!("reading record {at}: {e}")),
        RegistryError::Registry { message, .. }
            if message.contains("onnect") || message.contains("timed out") =>
        {
            Failure::Transient(format!("reading record {at}: {e}"))
        }
        _ => Failure::Definite(format!(
            "record {at} is not a Ferry change event Ferry can read: {e}; check the topic's producer and the schema registry"
        )),
    }
}
