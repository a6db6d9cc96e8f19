//! The migration status record's only writer, and the cutover steps (DESIGN.md §6).
//!
//! The coordinator keeps no state of its own: on start it reads `_state` (the MSR, the
//! exporters' checkpoints and final records) and from then on tails it. Every cutover
//! step is a check of facts in Kafka and the databases followed by an idempotent
//! action, re-evaluated every second, so a coordinator (or exporter, or importer)
//! killed at any moment completes the cutover once it runs again.
//!
//! The steps themselves, and what a request changes, are the pure state machine in
//! [`crate::cutover`]; this module observes the facts it asks for and performs its
//! effects.

use std::sync::Arc;
use std::time::Duration;

use ferry_shared::config::Config;
use ferry_shared::kafka;
use ferry_shared::shutdown::Shutdown;
use ferry_shared::state::{
    self, now_ms, CutoverStatus, ExporterFinal, MigrationStatus, StateView, Workflow, MSR_KEY,
};
use ferry_shared::topics::{Destination, Stream, Topics};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{watch, Mutex};

use crate::cutover::{self, Action, CutoverRequest, Effect, Refused};
use crate::databases::{self, connect, DbError};

/// Why the migration state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `_state` and `_status` could not be created.
    #[error("creating the state topics")]
    Topics(#[source] kafka::Error),
    /// The producer of the record could not be created.
    #[error("creating a kafka producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    /// The coordinator was stopped before `_state` was read.
    #[error("stopped before reading the migration state")]
    Stopped,
    /// The record could not be written.
    #[error("writing the migration status record")]
    Write(#[source] rdkafka::error::KafkaError),
}

/// Why a change to the record did not happen: the request was refused, or the record
/// could not be written.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Refused, with the reason and what to do.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Not written.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<UpdateError> for Refused {
    fn from(e: UpdateError) -> Refused {
        match e {
            UpdateError::Refused(r) => r,
            UpdateError::State(e) => Refused(ferry_shared::process::error_chain(&e)),
        }
    }
}

/// Why a cutover pass could not go on (it is tried again a second later; the text is
/// the cutover's `waiting_for` meanwhile).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A database could not be read or changed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The migration status record could not be written.
    #[error(transparent)]
    Record(#[from] StateError),
    /// A change was refused (a bug: the steps' changes never refuse).
    #[error(transparent)]
    Refused(Refused),
}

fn step_error(e: UpdateError) -> StepError {
    match e {
        UpdateError::State(e) => StepError::Record(e),
        // The steps' changes never refuse.
        UpdateError::Refused(r) => StepError::Refused(r),
    }
}

/// How often the MSR is written again while a cutover waits (see [`Migration::advance`]).
const REWRITE_WHILE_WAITING_MS: i64 = 10_000;

/// The coordinator's view of the migration.
pub struct Migration {
    /// The configuration.
    pub config: Config,
    /// Topic names.
    pub topics: Topics,
    kafka: rdkafka::ClientConfig,
    producer: FutureProducer,
    /// `_state` as tailed.
    state: watch::Receiver<Option<StateView>>,
    /// The MSR as last written (the coordinator is its only writer).
    msr: Mutex<MigrationStatus>,
    /// Serializes writes of the MSR (requests and the step loop).
    write_lock: Mutex<()>,
    /// Heartbeats from `_status`.
    pub heartbeats: watch::Receiver<Option<crate::positions::Heartbeats>>,
    /// The positions, rates and instances last measured by [`crate::positions::refresh`]
    /// (what `GET /api/status` serves, with the current MSR).
    pub(crate) measured: std::sync::RwLock<Option<crate::positions::Status>>,
    /// When status was last asked for (ms since the epoch): measuring goes on only while
    /// someone looks.
    pub(crate) last_asked_ms: std::sync::atomic::AtomicI64,
    /// Stops this coordinator (set by [`crate::run`]): once the migration has ended,
    /// there is nothing left for it to do.
    pub(crate) stop: std::sync::Mutex<Option<ferry_shared::shutdown::ShutdownTrigger>>,
}

impl Migration {
    /// Reads `_state` and writes the first MSR if there is none.
    pub async fn open(config: Config, shutdown: Shutdown) -> Result<Arc<Migration>, StateError> {
        let topics = Topics::new(config.migration.topic_prefix());
        let kafka = config.kafka.client_config();
        let replication = i32::from(config.migration.replication_factor);
        kafka::ensure_topics(&kafka, &kafka::state_topic_specs(&topics, replication))
            .await
            .map_err(StateError::Topics)?;
        let producer: FutureProducer = kafka::idempotent_producer_config(&kafka)
            .create()
            .map_err(StateError::Producer)?;
        let mut state_rx = state::watch(&kafka, &topics.state(), shutdown.clone());
        let mut stop = shutdown.clone();
        let view = state::first_view(&mut state_rx, &mut stop)
            .await
            .ok_or(StateError::Stopped)?;
        let heartbeats = state::tail_compacted(
            &kafka,
            &topics.status(),
            shutdown.clone(),
            crate::positions::Heartbeats::from_records,
        );
        let mut msr = view.msr.clone();
        let fresh = !view.msr_written;
        if fresh {
            msr.migration_id = config.migration.id.clone();
        }
        // The configured workflow is the migration's until the cutover to target fixes
        // it (the configuration may have changed before that).
        let configured = Workflow::from(config.migration.workflow);
        let reconfigured = msr.cutover_to_target.status == CutoverStatus::NotInitiated
            && msr.workflow != configured;
        if reconfigured {
            msr.workflow = configured;
        } else if msr.workflow != configured {
            tracing::warn!(
                configured = configured.as_str(),
                workflow = msr.workflow.as_str(),
                "migration.workflow differs from the workflow the cutover to target fixed; the migration keeps {}",
                msr.workflow.as_str()
            );
        }
        let m = Arc::new(Migration {
            config,
            topics,
            kafka,
            producer,
            state: state_rx,
            msr: Mutex::new(msr.clone()),
            write_lock: Mutex::new(()),
            heartbeats,
            measured: std::sync::RwLock::new(None),
            last_asked_ms: std::sync::atomic::AtomicI64::new(0),
            stop: std::sync::Mutex::new(None),
        });
        if fresh || reconfigured {
            let workflow = msr.workflow;
            m.store(msr).await?;
            tracing::info!(id = %m.config.migration.id, workflow = workflow.as_str(), "migration status record written");
        } else {
            tracing::info!(
                id = %msr.migration_id,
                to_target = msr.cutover_to_target.status.as_str(),
                "migration state rebuilt from {}",
                m.topics.state()
            );
        }
        Ok(m)
    }

    /// The MSR as last written.
    pub async fn msr(&self) -> MigrationStatus {
        self.msr.lock().await.clone()
    }

    /// The latest view of `_state`.
    pub fn view(&self) -> StateView {
        self.state.borrow().clone().unwrap_or_default()
    }

    /// The Kafka client settings.
    pub fn kafka(&self) -> &rdkafka::ClientConfig {
        &self.kafka
    }

    async fn store(&self, mut msr: MigrationStatus) -> Result<(), StateError> {
        msr.updated_at_ms = now_ms();
        let payload = msr.to_json();
        self.producer
            .send(
                FutureRecord::to(&self.topics.state())
                    .key(MSR_KEY)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| StateError::Write(e))?;
        *self.msr.lock().await = msr;
        Ok(())
    }

    /// Applies `change` to the MSR and stores it if it changed.
    async fn update<T>(
        &self,
        change: impl FnOnce(&mut MigrationStatus) -> Result<T, Refused>,
    ) -> Result<T, UpdateError> {
        let _guard = self.write_lock.lock().await;
        let before = self.msr().await;
        let mut msr = before.clone();
        let out = change(&mut msr)?;
        if msr != before {
            self.store(msr).await?;
        }
        Ok(out)
    }

    /// Records a cutover request (idempotent while it is in progress), or refuses it
    /// with the reason.
    pub async fn request_cutover(&self, req: &CutoverRequest) -> Result<MigrationStatus, Refused> {
        let view = self.view();
        let config = &self.config;
        let snapshot_done = view
            .checkpoints
            .get(&Stream::Source)
            .is_some_and(|c| c.snapshot.done);
        let ctx = cutover::RequestContext {
            snapshot_done,
            has_target: config.target.is_some(),
            has_source_replica: config.source_replica.is_some(),
            now_ms: now_ms(),
        };
        self.update(|msr| cutover::request(msr, req, ctx)).await?;
        tracing::info!(to = %req.to, prepare_for = ?req.prepare_for, "cutover initiated");
        Ok(self.msr().await)
    }

    /// Marks the migration ended: every service stops its work.
    pub async fn end(&self) -> Result<MigrationStatus, Refused> {
        self.update(|msr| {
            if msr.ended_at_ms.is_none() {
                msr.ended_at_ms = Some(now_ms());
            }
            Ok(())
        })
        .await?;
        Ok(self.msr().await)
    }

    /// Advances every cutover in progress as far as the facts allow.
    pub async fn advance(&self) {
        for to in [
            Destination::Target,
            Destination::SourceReplica,
            Destination::Source,
        ] {
            let msr = self.msr().await;
            if msr.ended_at_ms.is_some() || msr.cutover(to).status != CutoverStatus::Initiated {
                continue;
            }
            let result = self.advance_one(to).await;
            let waiting = match result {
                Ok(w) => w,
                Err(e) => Some(ferry_shared::process::error_chain(&e)),
            };
            let _ = self
                .update(|msr| {
                    // Written again every REWRITE_WHILE_WAITING_MS while the cutover
                    // waits: a broker that restarted uncleanly may hold the last
                    // record of `_state` above its high watermark (invisible to every
                    // reader) until the partition takes a new write, and the services
                    // would never see the request they wait for.
                    if now_ms() - msr.updated_at_ms > REWRITE_WHILE_WAITING_MS {
                        msr.updated_at_ms = now_ms();
                    }
                    let c = msr.cutover_mut(to);
                    if c.status == CutoverStatus::Initiated && c.waiting_for != waiting {
                        c.waiting_for = waiting.clone();
                    }
                    Ok(())
                })
                .await;
        }
    }

    /// What the importers of `destination` are doing, for a cutover's `waiting_for`:
    /// how many run, or that none does and why (the error the last one failed on, or
    /// when it was last seen), with the command that starts one.
    fn importer_health(&self, destination: Destination) -> String {
        let beats = self.heartbeats.borrow().clone().unwrap_or_default();
        let now = now_ms();
        let errors: Vec<crate::positions::InstanceError> = beats
            .current_errors(now)
            .into_iter()
            .filter(|e| e.role == "importer" && e.unit == destination.as_str())
            .collect();
        let states = crate::positions::instance_states(
            beats
                .importers
                .get(destination.as_str())
                .unwrap_or(&std::collections::BTreeMap::new()),
            &errors,
            now,
        );
        let command = format!("ferry import data to {destination}");
        let running = states.iter().filter(|s| s.is_up()).count();
        if running > 0 {
            return format!(" ({running} instance(s) of \"{command}\" running)");
        }
        match states.first() {
            Some(s) if s.state == "failed" => format!(
                "; the {destination} importer {} FAILED at {}: {}; fix that, then run \"{command}\" again (it resumes where it stopped)",
                s.instance,
                ferry_shared::state::format_ms(s.last_seen_ms),
                s.error.as_ref().map_or("(no message)", |e| e.message.as_str())
            ),
            Some(s) if s.state == "not seen" => format!(
                "; the {destination} importer {} has not been seen since {} (killed, or its machine is gone): run \"{command}\"",
                s.instance,
                ferry_shared::state::format_ms(s.last_seen_ms)
            ),
            _ => format!("; no {destination} importer is running: run \"{command}\""),
        }
    }

    /// Records of the stopped stream (`fin`) that `destination`'s importer has not
    /// applied yet.
    async fn left_to_apply(
        &self,
        destination: Destination,
        fin: &ExporterFinal,
    ) -> Result<i64, StepError> {
        let db = connect(&self.config, destination).await?;
        let positions = databases::positions(&db, &self.topics.import_group(destination)).await?;
        Ok(databases::remaining(&positions, fin))
    }

    /// One pass over the cutover to `to`: asks the state machine for the next action,
    /// observes and performs what it asks, until it waits (`Ok(Some(what))`) or the
    /// cutover is COMPLETED or not in progress (`Ok(None)`).
    async fn advance_one(&self, to: Destination) -> Result<Option<String>, StepError> {
        let stream = cutover::stopped_stream(to);
        let fin = self.view().finals.get(&stream).cloned();
        let mut facts = cutover::Facts {
            now_ms: now_ms(),
            final_record: fin.as_ref().map(|f| cutover::FinalFacts {
                lsn: f.lsn.to_string(),
                last_vsn: f.last_vsn,
                written_at_ms: f.written_at_ms,
                after_stop_events: f.after_stop_events,
            }),
            ..cutover::Facts::default()
        };
        // Each action is observed or performed at most once a pass; the bound only
        // guards against a machine that does not settle.
        for _ in 0..32 {
            let msr = self.msr().await;
            let action = cutover::next(&msr, to, &self.config.migration.id, &facts);
            // Every action but Idle and Wait needs the final record, which `next`
            // asks for first.
            let Some(fin) = fin.as_ref() else {
                return Ok(match action {
                    Action::Wait(w) => Some(w.describe("")),
                    _ => None,
                });
            };
            match action {
                Action::Idle => return Ok(None),
                Action::Wait(w) => {
                    let health = match &w {
                        cutover::Wait::Importer { destination, .. } => {
                            self.importer_health(*destination)
                        }
                        _ => String::new(),
                    };
                    return Ok(Some(w.describe(&health)));
                }
                Action::Observe(cutover::Observe::LeftToApply { destination, .. }) => {
                    let left = self.left_to_apply(destination, fin).await?;
                    facts.left_to_apply.push((destination, left));
                }
                Action::Observe(cutover::Observe::TargetSlotExists { slot }) => {
                    let db = connect(&self.config, Destination::Target).await?;
                    facts.target_slot_exists = Some(databases::slot_ready(&db, &slot).await?);
                }
                Action::Perform(Effect::SetSequences { on }) => {
                    let db = connect(&self.config, on).await?;
                    let set = databases::set_sequences(&db, on, &fin.sequences).await?;
                    facts.sequences_set = Some((set.set, set.raised));
                }
                Action::Perform(Effect::DropSlot {
                    on,
                    slot,
                    terminate,
                }) => {
                    let db = connect(&self.config, on).await?;
                    let engine = self
                        .config
                        .database(on)
                        .map(|d| d.engine)
                        .unwrap_or_default();
                    facts.slot_dropped =
                        Some(databases::drop_slot(&db, engine, &slot, terminate).await?);
                }
                Action::Perform(Effect::StartTargetStream { first }) => {
                    self.update(|msr| {
                        cutover::start_target_stream(msr, first);
                        Ok(())
                    })
                    .await
                    .map_err(step_error)?;
                }
                Action::Mark {
                    name,
                    description,
                    also,
                    ..
                } => {
                    self.update(|msr| {
                        cutover::mark_done(msr, to, &name, &description, also, now_ms());
                        Ok(())
                    })
                    .await
                    .map_err(step_error)?;
                    tracing::info!(to = %to, step = %name, "cutover step done");
                }
                Action::Complete => {
                    self.update(|msr| {
                        cutover::complete(msr, to, now_ms());
                        Ok(())
                    })
                    .await
                    .map_err(step_error)?;
                    tracing::info!(to = %to, "cutover COMPLETED");
                    return Ok(None);
                }
            }
        }
        Ok(Some(
            "the coordinator to settle the cutover (it did not within one pass; it tries again)"
                .into(),
        ))
    }
}

/// Advances cutovers every second until `shutdown`.
pub async fn drive(m: Arc<Migration>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        m.advance().await;
    }
}
