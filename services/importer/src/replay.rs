//! Replaying a stream into a database (DESIGN.md §7): recovery of a restored backup, or
//! building a new replica, through the importer's own apply path.
//!
//! Exactly once holds as for the importer (crate docs): each batch writes its rows, the
//! positions of its partitions and its counts in one destination transaction, under the
//! replay's own consumer group `<prefix>.replay.<name>` in `ferry_metadata`, so a replay
//! never moves an importer's positions. A replay that is stopped or killed and started
//! again with the same name resumes from the positions stored in the database: records
//! below a stored offset are not read again and events at or below a partition's stored
//! VSN are skipped. Events come in VSN order across partitions and tables
//! ([`ferry_shared::replay::MergedReader`]).
//!
//! A replay ends at its end point ([`EndAt`]): by default the partitions' ends when it
//! starts. It does not wait for new events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_shared::catalog::TableName;
use ferry_shared::codec::EventDecoder;
use ferry_shared::config::{Config, DatabaseConfig};
use ferry_shared::position::Vsn;
use ferry_shared::registry::RegistryClient;
use ferry_shared::replay::{
    plan, EndAt, MergedReader, ReadError, RetainedRecord, Selection, StartAt,
};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::Topics;
use tokio_postgres::Client;

use crate::error::Failure;
use crate::event::Event;
use crate::sink::postgres::{self, ConnectionTask, PgSink};
use crate::sink::{Counts, Sink, Stored};
use crate::Error;
use ferry_shared::error_policy::Backoff;

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What to replay, and into which database.
#[derive(Clone, Debug)]
pub struct ReplayApply {
    /// The database to write.
    pub db: DatabaseConfig,
    /// How messages name that database (`target`, `database restore_1 on host:5432`).
    pub label: String,
    /// The replay's name: its positions are stored under group `<prefix>.replay.<name>`;
    /// running again with the same name resumes.
    pub name: String,
    /// The stream and tables.
    pub selection: Selection,
    /// Where to start (ignored for partitions with stored positions, which resume).
    pub start: StartAt,
    /// Where to stop.
    pub end: EndAt,
}

/// What a replay into a database did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayApplied {
    /// The consumer group its positions are stored under.
    pub group: String,
    /// Events applied by this run, per table.
    pub counts: BTreeMap<TableName, Counts>,
    /// True when it reached its end point (false: stopped by shutdown).
    pub completed: bool,
    /// The last VSN applied by this run, if any.
    pub last_vsn: Option<Vsn>,
}

impl ReplayApplied {
    /// Events applied by this run.
    pub fn events(&self) -> u64 {
        self.counts.values().map(Counts::total).sum()
    }
}

/// The consumer group under which a replay named `name` stores its positions.
pub fn replay_group(prefix: &str, name: &str) -> String {
    format!("{prefix}.replay.{name}")
}

/// Applies the selected events from `start` to `end` to `opts.db`, exactly once, and
/// returns when the end is reached or `shutdown` fires (after committing the batch in
/// flight). Transient failures restart from the stored positions with backoff.
pub async fn apply(
    config: &Config,
    opts: ReplayApply,
    mut shutdown: Shutdown,
) -> Result<ReplayApplied, Error> {
    let topics = Topics::new(config.migration.topic_prefix());
    let group = replay_group(topics.prefix(), &opts.name);
    let registry = RegistryClient::from_config(config)
        .map_err(|e| Error::Definite(format!("schema registry: {e}")))?;
    let (client, conn) = connect(&opts.db, &opts.label)
        .await
        .map_err(|f| Error::Definite(f.to_string()))?;
    client
        .batch_execute(postgres::SETUP_SQL)
        .await
        .map_err(|e| {
            Error::Definite(format!(
                "creating the ferry_metadata schema in the {}: {}",
                opts.label,
                ferry_shared::error_policy::describe_pg(&e)
            ))
        })?;
    tracing::info!(%group, database = %opts.db.display(), stream = %opts.selection.stream, "replay starting");
    let mut run = Run {
        kafka: config.kafka.client_config(),
        topics,
        group: group.clone(),
        decoder: EventDecoder::new(registry),
        last_table: None,
        batch_rows: config.importer.batch_rows.max(1) as usize,
        batch_max: Duration::from_millis(u64::from(config.importer.batch_max_ms.max(1))),
        sink: Some(PgSink::new(client, Some(conn), &group, &opts.label)),
        inflight: None,
        result: ReplayApplied {
            group,
            ..ReplayApplied::default()
        },
        opts,
    };
    let mut backoff = Backoff::new();
    loop {
        match run.once(&mut shutdown).await {
            Ok(completed) => {
                run.result.completed = completed;
                tracing::info!(group = %run.result.group, events = run.result.events(), completed, "replay finished");
                return Ok(run.result);
            }
            Err(Failure::Definite(message)) => {
                return Err(Error::Definite(message));
            }
            Err(Failure::Fatal(message)) => {
                return Err(Error::Fatal(message));
            }
            Err(f) => {
                let text = f.to_string();
                let delay = backoff.next_delay(&text)?;
                tracing::warn!(error = %text, ?delay, "replay interrupted; resuming from the positions stored in the database");
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => {
                        return Ok(run.result);
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn connect(db: &DatabaseConfig, label: &str) -> Result<(Client, ConnectionTask), Failure> {
    postgres::open_session(db).await.map_err(|e| match e {
        postgres::SessionError::Connect(e) => {
            Failure::Transient(format!("connecting to the {label}: {e}"))
        }
        postgres::SessionError::ReplicationRole(source) => Failure::Definite(
            Error::ReplicationRole {
                role: db.user.clone(),
                destination: label.to_owned(),
                source,
            }
            .to_string(),
        ),
        postgres::SessionError::Setup(e) => {
            postgres::db_failure("setting up the replay session", &e)
        }
    })
}

fn read_failure(e: ReadError) -> Failure {
    match e {
        ReadError::Kafka(e) => Failure::Transient(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_default()
        )),
        ReadError::Request(m) | ReadError::Stream(m) => Failure::Definite(m),
    }
}

struct Run {
    kafka: rdkafka::ClientConfig,
    topics: Topics,
    group: String,
    decoder: EventDecoder,
    /// The table of the last event (shared by the events that follow it).
    last_table: Option<Arc<TableName>>,
    batch_rows: usize,
    batch_max: Duration,
    /// The database, written under the replay's group (owns the connection); `None`
    /// while a batch commits in the background ([`Run::inflight`]).
    sink: Option<PgSink>,
    /// The batch being committed while the next one is read and decoded: one at a
    /// time, so batches still commit in order, each compare-and-set against the
    /// positions the one before stored.
    inflight: Option<tokio::task::JoinHandle<Committed>>,
    result: ReplayApplied,
    opts: ReplayApply,
}

/// A batch committed in the background: the sink back, and what was written.
struct Committed {
    sink: PgSink,
    written: Result<BTreeMap<TableName, Counts>, Failure>,
    positions: HashMap<(Arc<str>, i32), Stored>,
}

/// Events and positions not yet written.
#[derive(Default)]
struct Batch {
    events: BTreeMap<TableName, Vec<Event>>,
    /// (topic, partition) -> the new position.
    positions: HashMap<(Arc<str>, i32), Stored>,
    records: usize,
    started: Option<Instant>,
}

impl Run {
    /// One pass from the stored positions to the end; `Ok(false)` when stopped by
    /// shutdown.
    async fn once(&mut self, shutdown: &mut Shutdown) -> Result<bool, Failure> {
        if self.sink.as_ref().is_none_or(PgSink::is_closed) {
            let (client, conn) = connect(&self.opts.db, &self.opts.label).await?;
            self.sink = Some(PgSink::new(
                client,
                Some(conn),
                &self.group,
                &self.opts.label,
            ));
        }
        let sink = self.sink()?;
        sink.forget_tables();
        let names = self
            .opts
            .selection
            .topics(&self.kafka, &self.topics)
            .await
            .map_err(read_failure)?;
        let mut ranges = plan(&self.kafka, &names, &self.opts.start, &self.opts.end)
            .await
            .map_err(read_failure)?;
        let keys: Vec<(String, i32)> = ranges
            .iter()
            .map(|r| (r.topic.clone(), r.partition))
            .collect();
        let stored = self.sink()?.load_positions(&keys).await?;
        let stored: HashMap<(String, i32), Stored> = stored
            .into_iter()
            .map(|s| ((s.topic.clone(), s.partition), s))
            .collect();
        // (topic, partition) -> stored next offset (the compare-and-set value).
        let mut committed: HashMap<(String, i32), i64> = HashMap::new();
        for r in &mut ranges {
            let key = (r.topic.clone(), r.partition);
            if let Some(s) = stored.get(&key) {
                if s.next_offset > 0 || s.last_vsn > Vsn::ZERO {
                    r.from = r.from.max(s.next_offset).min(r.to.max(r.from));
                    r.taken_through = r.taken_through.max(s.last_vsn);
                }
                committed.insert(key, s.next_offset);
            }
        }
        let resumed = stored.values().filter(|s| s.next_offset > 0).count();
        let total: u64 = ranges.iter().map(|r| r.len()).sum();
        tracing::info!(group = %self.group, topics = names.len(), partitions = ranges.len(), resumed, records = total, "replay reading");
        let mut reader = MergedReader::start(&self.kafka, ranges).map_err(read_failure)?;
        let result = self.consume(&mut reader, &mut committed, shutdown).await;
        reader.close().await;
        // The last batch lands (or fails) before the pass ends, whatever ended it.
        let landed = self.landed(&mut committed).await;
        let completed = result?;
        landed?;
        Ok(completed)
    }

    fn sink(&mut self) -> Result<&mut PgSink, Failure> {
        self.sink
            .as_mut()
            .ok_or_else(|| Failure::Transient("the replay's database session is gone".into()))
    }

    /// Waits for the batch in flight, if any, and takes in what it wrote (positions into
    /// `committed`, counts into the result); its failure, if it failed.
    async fn landed(&mut self, committed: &mut HashMap<(String, i32), i64>) -> Result<(), Failure> {
        let Some(task) = self.inflight.take() else {
            return Ok(());
        };
        let c = task.await.map_err(|e| {
            Failure::Transient(format!("the commit task of the replay failed: {e}"))
        })?;
        self.sink = Some(c.sink);
        let counts = c.written?;
        for new in c.positions.into_values() {
            self.result.last_vsn = self.result.last_vsn.max(Some(new.last_vsn));
            committed.insert((new.topic, new.partition), new.next_offset);
        }
        for (name, c) in counts {
            let t = self.result.counts.entry(name).or_default();
            t.snapshot_rows += c.snapshot_rows;
            t.inserts += c.inserts;
            t.updates += c.updates;
            t.deletes += c.deletes;
        }
        Ok(())
    }

    async fn consume(
        &mut self,
        reader: &mut MergedReader,
        committed: &mut HashMap<(String, i32), i64>,
        shutdown: &mut Shutdown,
    ) -> Result<bool, Failure> {
        let mut batch = Batch::default();
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let deadline = batch
                .started
                .map(|s| tokio::time::Instant::from_std(s + self.batch_max));
            tokio::select! {
                biased;
                _ = shutdown.wait() => {
                    self.flush(&mut batch, committed).await?;
                    return Ok(false);
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    self.flush(&mut batch, committed).await?;
                }
                next = reader.next_batch() => match next {
                    None => {
                        self.flush(&mut batch, committed).await?;
                        return Ok(true);
                    }
                    Some(Err(e)) => return Err(read_failure(e)),
                    Some(Ok(records)) => {
                        for r in records {
                            self.take(r, &mut batch).await?;
                            if batch.records >= self.batch_rows {
                                self.flush(&mut batch, committed).await?;
                            }
                        }
                    }
                },
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                let (read, total) = reader.progress();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = read as f64 / secs;
                let left = total.saturating_sub(read);
                let eta = if rate > 0.0 {
                    format!("{:.0}s", left as f64 / rate)
                } else {
                    "unknown".into()
                };
                tracing::info!(
                    group = %self.group,
                    applied = self.result.events(),
                    read,
                    remaining = left,
                    rate = format!("{rate:.0}/s"),
                    eta = %eta,
                    "replay progress"
                );
            }
        }
    }

    async fn take(&mut self, r: RetainedRecord, batch: &mut Batch) -> Result<(), Failure> {
        // Named only when an error needs it (formatting it per record cost more than
        // reading the record).
        let at = || format!("{}[{}]@{}", r.topic, r.partition, r.offset);
        if let Some(payload) = &r.value {
            let event = Event::decode(
                &self.decoder,
                r.key.as_deref(),
                payload,
                &mut self.last_table,
                &at,
            )
            .await?;
            match batch.events.get_mut(event.table.as_ref()) {
                Some(events) => events.push(event),
                None => {
                    batch.events.insert((*event.table).clone(), vec![event]);
                }
            }
        }
        match batch.positions.get_mut(&(r.topic.clone(), r.partition)) {
            Some(p) => {
                p.next_offset = r.offset + 1;
                p.last_vsn = r.vsn;
            }
            None => {
                batch.positions.insert(
                    (r.topic.clone(), r.partition),
                    Stored {
                        topic: r.topic.to_string(),
                        partition: r.partition,
                        next_offset: r.offset + 1,
                        last_vsn: r.vsn,
                    },
                );
            }
        }
        batch.records += 1;
        batch.started.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Writes the batch, its positions and counts in one transaction, in the background:
    /// waits for the batch before it to land first (its positions are this one's
    /// compare-and-set values).
    async fn flush(
        &mut self,
        batch: &mut Batch,
        committed: &mut HashMap<(String, i32), i64>,
    ) -> Result<(), Failure> {
        if batch.positions.is_empty() {
            *batch = Batch::default();
            return Ok(());
        }
        self.landed(committed).await?;
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| Failure::Transient("the replay's database session is gone".into()))?;
        let mut b = std::mem::take(batch);
        let expected: Vec<i64> = b
            .positions
            .values()
            .map(|new| {
                committed
                    .get(&(new.topic.clone(), new.partition))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        self.inflight = Some(tokio::spawn(async move {
            let mut moves: Vec<(i64, &Stored)> =
                expected.into_iter().zip(b.positions.values()).collect();
            let written = sink
                .commit(&mut b.events, &mut moves)
                .await
                .map(|(counts, _)| counts);
            drop(moves);
            Committed {
                sink,
                written,
                positions: b.positions,
            }
        }));
        Ok(())
    }
}
