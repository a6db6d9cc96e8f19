//! Replaying a stream into a database (DESIGN.md §7): recovery of a restored backup, or
//! building a new replica, through the importer's own apply path.
//!
//! Exactly once holds as for the importer (crate docs): each batch writes its rows, the
//! positions of its partitions and its counts in one destination transaction, under the
//! replay's own consumer group `<prefix>.replay.<name>` in `ferry_metadata`, so a replay
//! never moves an importer's positions. A replay that is stopped or killed and started
//! again with the same name resumes from the positions stored in the database: records
//! below a stored offset are not read again and events at or below a partition's stored
//! VSN are skipped. Events are read in VSN order across partitions and tables
//! ([`ferry_shared::replay::MergedReader`]) and applied as the importer applies them: by
//! `importer.workers` workers, each with its own session, each partition by one worker
//! in its order (a key's events stay in its partition). The end state is the same as
//! one session applying everything in VSN order; a replay stopped part-way leaves every
//! partition at its own stored position, from which the next run resumes.
//!
//! A replay ends at its end point ([`EndAt`]): by default the partitions' ends when it
//! starts. It does not wait for new events.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferry_shared::catalog::TableName;
use ferry_shared::codec::EventDecoder;
use ferry_shared::config::{Config, DatabaseConfig};
use ferry_shared::position::Vsn;
use ferry_shared::registry::RegistryClient;
use ferry_shared::replay::{plan, EndAt, MergedReader, ReadError, Selection, StartAt};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::Topics;
use tokio_postgres::Client;

use crate::consumer::Record;
use crate::error::Failure;
use crate::sink::postgres::{self, ConnectionTask, PgSink};
use crate::sink::{Counts, Sink, Stored};
use crate::worker::{Committed, Pool, Setup};
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
        setup: Setup {
            decoder: EventDecoder::new(registry),
            batch_rows: config.importer.batch_rows.max(1) as usize,
            batch_max: Duration::from_millis(u64::from(config.importer.batch_max_ms.max(1))),
        },
        workers: config.importer.workers.max(1) as usize,
        control: Some(PgSink::new(client, Some(conn), &group, &opts.label)),
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
    /// What the apply workers share (decoder, batch size and time).
    setup: Setup,
    /// Apply workers per pass (`importer.workers`), each with its own session.
    workers: usize,
    /// The session that reads the stored positions (owns the connection).
    control: Option<PgSink>,
    result: ReplayApplied,
    opts: ReplayApply,
}

impl Run {
    /// One pass from the stored positions to the end; `Ok(false)` when stopped by
    /// shutdown.
    async fn once(&mut self, shutdown: &mut Shutdown) -> Result<bool, Failure> {
        if self.control.as_ref().is_none_or(PgSink::is_closed) {
            self.control = Some(self.session().await?);
        }
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
        let control = self
            .control
            .as_ref()
            .ok_or_else(|| Failure::Transient("the replay's database session is gone".into()))?;
        let stored = control.load_positions(&keys).await?;
        let stored: HashMap<(String, i32), Stored> = stored
            .into_iter()
            .map(|s| ((s.topic.clone(), s.partition), s))
            .collect();
        // Every partition goes to a worker at its stored position (none stored: offset
        // 0, the compare-and-set value of a first write, and VSN 0).
        let mut assigned = Vec::with_capacity(ranges.len());
        for r in &mut ranges {
            let key = (r.topic.clone(), r.partition);
            let at = stored.get(&key).cloned().unwrap_or(Stored {
                topic: r.topic.clone(),
                partition: r.partition,
                next_offset: 0,
                last_vsn: Vsn::ZERO,
            });
            if at.next_offset > 0 || at.last_vsn > Vsn::ZERO {
                r.from = r.from.max(at.next_offset).min(r.to.max(r.from));
                r.taken_through = r.taken_through.max(at.last_vsn);
            }
            assigned.push(at);
        }
        let resumed = stored.values().filter(|s| s.next_offset > 0).count();
        let total: u64 = ranges.iter().map(|r| r.len()).sum();
        tracing::info!(group = %self.group, topics = names.len(), partitions = ranges.len(), resumed, records = total, workers = self.workers, "replay reading");
        let mut sinks = Vec::with_capacity(self.workers);
        for _ in 0..self.workers {
            sinks.push(self.session().await?);
        }
        let mut pool = Pool::start(&self.setup, sinks);
        let mut reader = MergedReader::start(&self.kafka, ranges).map_err(read_failure)?;
        let result = match pool.assign(assigned).await {
            Ok(()) => self.consume(&mut reader, &mut pool, shutdown).await,
            Err(f) => Err(f),
        };
        reader.close().await;
        // What the workers hold lands (or fails) before the pass ends, whatever ended it.
        let landed = match &result {
            Ok(_) => pool.flush(false).await,
            Err(_) => Ok(()),
        };
        let drained = pool.drain();
        pool.stop().await;
        for c in drained? {
            self.took(c);
        }
        let completed = result?;
        landed?;
        Ok(completed)
    }

    /// A new session on the replay's database, writing under its group.
    async fn session(&self) -> Result<PgSink, Failure> {
        let (client, conn) = connect(&self.opts.db, &self.opts.label).await?;
        Ok(PgSink::new(
            client,
            Some(conn),
            &self.group,
            &self.opts.label,
        ))
    }

    /// Takes in what a worker committed: counts into the result, the last VSN.
    fn took(&mut self, c: Committed) {
        for new in &c.positions {
            self.result.last_vsn = self.result.last_vsn.max(Some(new.last_vsn));
        }
        for (name, c) in c.counts {
            let t = self.result.counts.entry(name).or_default();
            t.snapshot_rows += c.snapshot_rows;
            t.inserts += c.inserts;
            t.updates += c.updates;
            t.deletes += c.deletes;
        }
    }

    async fn consume(
        &mut self,
        reader: &mut MergedReader,
        pool: &mut Pool,
        shutdown: &mut Shutdown,
    ) -> Result<bool, Failure> {
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(false),
                committed = pool.committed() => self.took(committed?),
                next = reader.next_batch() => match next {
                    None => return Ok(true),
                    Some(Err(e)) => return Err(read_failure(e)),
                    Some(Ok(records)) => {
                        let records = records
                            .into_iter()
                            .map(|r| Record {
                                topic: r.topic,
                                partition: r.partition,
                                offset: r.offset,
                                key: r.key,
                                payload: r.value,
                            })
                            .collect();
                        pool.records(records, false).await?;
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
}
