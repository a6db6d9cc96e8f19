//! The migration status record's only writer, and the cutover steps (DESIGN.md §6).
//!
//! The coordinator keeps no state of its own: on start it reads `_state` (the MSR, the
//! exporters' checkpoints and final records) and from then on tails it. Every cutover
//! step is a check of facts in Kafka and the databases followed by an idempotent
//! action, re-evaluated every second, so a coordinator (or exporter, or importer)
//! killed at any moment completes the cutover once it runs again.
//!
//! Cutover to target (`prepare_for`: none, fall-forward, fall-back):
//!
//! 1. `requested`: the MSR tells the source exporter to stop;
//! 2. `source-exporter-stopped`: its final record is in `_state` (every change up to
//!    the end of the source's WAL at the request is in Kafka, the sequences recorded);
//! 3. `target-importer-drained`: the positions stored in the target reached the final
//!    end offsets; the target importer is paused;
//! 4. `sequences-set-on-target`;
//! 5. `source-slot-dropped`: the source slot and publication are gone (so that a
//!    fall-back importer never writes to a database with a Ferry slot capturing);
//! 6. with fall-forward or fall-back: `target-stream-started` (the target exporter
//!    created its slot; VSNs continue above the source stream's last), then
//!    `source-replica-importer-switched` (after it drained the source stream) or
//!    `source-importer-switched`;
//! 7. COMPLETED.
//!
//! Cutover to source-replica / to source: the target exporter stops (final record),
//! the destination's importer drains the target stream and pauses, the sequences are
//! set there, the target slot and publication are dropped, COMPLETED.

use std::sync::Arc;
use std::time::Duration;

use ferry_shared::config::Config;
use ferry_shared::kafka::{self, TopicSpec};
use ferry_shared::position::Vsn;
use ferry_shared::shutdown::Shutdown;
use ferry_shared::state::{
    self, now_ms, CutoverStatus, CutoverStep, MigrationStatus, StateView, StreamPhase, Workflow,
    MSR_KEY,
};
use ferry_shared::topics::{slot_name, Destination, Stream, Topics};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::databases::{self, connect};

/// What the operator asked to prepare for at cutover to target.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrepareFor {
    /// Nothing: live migration.
    #[default]
    None,
    /// Keep the source-replica in sync from the target.
    FallForward,
    /// Keep the source in sync from the target.
    FallBack,
}

/// A cutover request, as the CLI sends it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CutoverRequest {
    /// `target`, `source-replica` or `source`.
    pub to: Destination,
    /// Only with `to: target`.
    #[serde(default)]
    pub prepare_for: PrepareFor,
}

/// The workflow a cutover to target fixes: the configured one (`migration.workflow`,
/// already in the MSR) unless a `--prepare-for-*` flag asks for one. A flag may turn a
/// live migration into fall-forward or fall-back; it may not contradict a configured
/// fall-forward or fall-back.
pub fn workflow_for(configured: Workflow, prepare_for: PrepareFor) -> Result<Workflow, Refused> {
    let (asked, flag) = match prepare_for {
        PrepareFor::None => return Ok(configured),
        PrepareFor::FallForward => (Workflow::FallForward, "--prepare-for-fall-forward"),
        PrepareFor::FallBack => (Workflow::FallBack, "--prepare-for-fall-back"),
    };
    if configured != Workflow::Live && configured != asked {
        return Err(Refused(format!(
            "{flag} contradicts this migration's workflow, {} (migration.workflow in the configuration): initiate the cutover without the flag to prepare for {}, or change migration.workflow and restart the coordinator",
            configured.as_str(),
            configured.as_str()
        )));
    }
    Ok(asked)
}

/// How often the MSR is written again while a cutover waits (see [`Migration::advance`]).
const REWRITE_WHILE_WAITING_MS: i64 = 10_000;

/// A request the coordinator refuses, with the reason and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

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
    pub async fn open(config: Config, shutdown: Shutdown) -> Result<Arc<Migration>, String> {
        let topics = Topics::new(config.migration.topic_prefix());
        let kafka = config.kafka.client_config();
        let replication = i32::from(config.migration.replication_factor);
        kafka::ensure_topics(
            &kafka,
            &[topics.state(), topics.status()]
                .into_iter()
                .map(|name| TopicSpec {
                    name,
                    partitions: 1,
                    replication,
                    compacted: true,
                })
                .collect::<Vec<_>>(),
        )
        .await
        .map_err(|e| format!("creating the state topics: {e}"))?;
        let producer: FutureProducer = kafka::idempotent_producer_config(&kafka)
            .create()
            .map_err(|e| format!("creating a kafka producer: {e}"))?;
        let mut state_rx = state::watch(&kafka, &topics.state(), shutdown.clone());
        let mut stop = shutdown.clone();
        let view = state::first_view(&mut state_rx, &mut stop)
            .await
            .ok_or_else(|| "stopped before reading the migration state".to_owned())?;
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

    async fn store(&self, mut msr: MigrationStatus) -> Result<(), String> {
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
            .map_err(|(e, _)| format!("writing the migration status record: {e}"))?;
        *self.msr.lock().await = msr;
        Ok(())
    }

    /// Applies `change` to the MSR and stores it if it changed.
    async fn update<T>(
        &self,
        change: impl FnOnce(&mut MigrationStatus) -> Result<T, Refused>,
    ) -> Result<T, Refused> {
        let _guard = self.write_lock.lock().await;
        let before = self.msr().await;
        let mut msr = before.clone();
        let out = change(&mut msr)?;
        if msr != before {
            self.store(msr).await.map_err(Refused)?;
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
        self.update(|msr| {
            if msr.ended_at_ms.is_some() {
                return Err(Refused("the migration was ended (ferry end migration); start a new one".into()));
            }
            let current = msr.cutover(req.to).status;
            match current {
                CutoverStatus::Completed => {
                    return Err(Refused(format!(
                        "cutover to {} is already COMPLETED",
                        req.to
                    )))
                }
                CutoverStatus::Initiated => return Ok(()),
                CutoverStatus::NotInitiated => {}
            }
            match req.to {
                Destination::Target => {
                    if !snapshot_done {
                        return Err(Refused(
                            "the source exporter has not finished the snapshot yet (no stored checkpoint says so): run \"ferry export data from source\" and wait until it streams changes, then initiate the cutover again".into(),
                        ));
                    }
                    if config.target.is_none() {
                        return Err(Refused("no [target] database is configured".into()));
                    }
                    msr.workflow = workflow_for(msr.workflow, req.prepare_for)?;
                    if msr.workflow == Workflow::FallForward && config.source_replica.is_none() {
                        return Err(Refused("the fall-forward workflow needs a source-replica: add a [source_replica] section to ferry.toml and run \"ferry import data to source-replica\" from the start of the migration".into()));
                    }
                    msr.source_stream.phase = StreamPhase::Stop;
                }
                Destination::SourceReplica | Destination::Source => {
                    if req.prepare_for != PrepareFor::None {
                        return Err(Refused(format!(
                            "preparing for fall-back or fall-forward applies only to the cutover to target, not to {}",
                            req.to
                        )));
                    }
                    let needed = if req.to == Destination::Source {
                        Workflow::FallBack
                    } else {
                        Workflow::FallForward
                    };
                    let flag = if needed == Workflow::FallBack {
                        "--prepare-for-fall-back"
                    } else {
                        "--prepare-for-fall-forward"
                    };
                    let to_target = msr.cutover_to_target.status;
                    if to_target != CutoverStatus::Completed {
                        return Err(Refused(format!(
                            "cutover to {} needs the cutover to target to be COMPLETED first (it is {}); run \"ferry initiate cutover to target {flag}\" and wait for \"ferry cutover status\" to show it COMPLETED",
                            req.to,
                            to_target.as_str()
                        )));
                    }
                    if msr.workflow != needed {
                        return Err(Refused(format!(
                            "cutover to {} is possible only when the cutover to target was initiated with {flag}; this migration's workflow is {}",
                            req.to,
                            msr.workflow.as_str()
                        )));
                    }
                    msr.target_stream.phase = StreamPhase::Stop;
                }
            }
            let c = msr.cutover_mut(req.to);
            c.status = CutoverStatus::Initiated;
            c.requested_at_ms = Some(now_ms());
            c.steps.push(CutoverStep {
                name: "requested".into(),
                description: "cutover requested; the exporter was told to stop at the end of the WAL".into(),
                done_at_ms: now_ms(),
            });
            c.waiting_for = Some("the exporter to export up to the end of the WAL and stop".into());
            Ok(())
        })
        .await?;
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
            let result = match to {
                Destination::Target => self.advance_to_target().await,
                _ => self.advance_back(to).await,
            };
            let waiting = match result {
                Ok(Some(w)) => Some(w),
                Ok(None) => None,
                Err(e) => Some(e),
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

    /// Marks step `name` of the cutover to `to` done (with `also` applied to the MSR in
    /// the same write).
    async fn step(
        &self,
        to: Destination,
        name: &str,
        description: &str,
        also: impl FnOnce(&mut MigrationStatus),
    ) -> Result<(), String> {
        self.update(|msr| {
            also(msr);
            let c = msr.cutover_mut(to);
            if !c.done(name) {
                c.steps.push(CutoverStep {
                    name: name.to_owned(),
                    description: description.to_owned(),
                    done_at_ms: now_ms(),
                });
                tracing::info!(to = %to, step = name, "cutover step done");
            }
            Ok(())
        })
        .await
        .map_err(|e| e.0)
    }

    async fn complete(&self, to: Destination) -> Result<(), String> {
        self.update(|msr| {
            let c = msr.cutover_mut(to);
            c.status = CutoverStatus::Completed;
            c.completed_at_ms = Some(now_ms());
            c.waiting_for = None;
            Ok(())
        })
        .await
        .map_err(|e| e.0)?;
        tracing::info!(to = %to, "cutover COMPLETED");
        Ok(())
    }

    /// What the importers of `destination` are doing, for a cutover's `waiting_for`:
    /// how many run, or that none does and why (the error the last one failed on, or
    /// when it was last seen), with the command that starts one.
    fn importer_health(&self, destination: Destination) -> String {
        let beats = self.heartbeats.borrow().clone().unwrap_or_default();
        let states = beats
            .importers
            .get(destination.as_str())
            .map(|b| crate::positions::instance_states(b, now_ms()))
            .unwrap_or_default();
        let command = format!("ferry import data to {destination}");
        let running = states
            .iter()
            .filter(|s| s.state == "running" || s.state == "standby")
            .count();
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

    /// Is `destination`'s importer done with `stream`'s final record? Returns the
    /// number of records it still has to apply.
    async fn left_to_apply(&self, destination: Destination, stream: Stream) -> Result<i64, String> {
        let view = self.view();
        let Some(fin) = view.finals.get(&stream) else {
            return Err(format!("the {stream} exporter's final record"));
        };
        let db = connect(&self.config, destination).await?;
        let positions = databases::positions(&db, &self.topics.import_group(destination)).await?;
        Ok(databases::remaining(&positions, fin))
    }

    /// One pass over the cutover to target; `Ok(Some(what))` names what it waits for.
    async fn advance_to_target(&self) -> Result<Option<String>, String> {
        let to = Destination::Target;
        let msr = self.msr().await;
        let c = msr.cutover(to).clone();
        let view = self.view();
        let Some(fin) = view.finals.get(&Stream::Source).cloned() else {
            return Ok(Some(
                "the source exporter to export every change up to the end of the source's WAL and stop (is \"ferry export data from source\" running?)".into(),
            ));
        };
        if !c.done("source-exporter-stopped") {
            self.step(
                to,
                "source-exporter-stopped",
                &format!(
                    "source exporter stopped at LSN {}, last VSN {}",
                    fin.lsn, fin.last_vsn
                ),
                |_| {},
            )
            .await?;
        }
        if !c.done("target-importer-drained") {
            let left = self
                .left_to_apply(Destination::Target, Stream::Source)
                .await?;
            if left > 0 {
                return Ok(Some(format!(
                    "the target importer to apply the last {left} event(s) of the source stream{}",
                    self.importer_health(Destination::Target)
                )));
            }
            self.step(
                to,
                "target-importer-drained",
                "the target importer applied every event of the source stream and paused",
                |msr| msr.importers.set(Destination::Target, None),
            )
            .await?;
        }
        if !c.done("sequences-set-on-target") {
            let db = connect(&self.config, Destination::Target).await?;
            let n = databases::set_sequences(&db, Destination::Target, &fin.sequences).await?;
            self.step(
                to,
                "sequences-set-on-target",
                &format!("{n} sequence(s) set on the target from the source's last values"),
                |_| {},
            )
            .await?;
        }
        if !c.done("source-slot-dropped") {
            let slot = slot_name(&self.config.migration.id, Stream::Source);
            let db = connect(&self.config, Destination::Source).await?;
            // The exporter ends its replication session right after the final record;
            // one that is still attached a while later is ended.
            let late = now_ms() - fin.written_at_ms > 30_000;
            if !databases::drop_slot(&db, &slot, late).await? {
                return Ok(Some(format!(
                    "the source exporter to close its replication session on slot {slot}"
                )));
            }
            self.step(
                to,
                "source-slot-dropped",
                &format!("replication slot and publication {slot} dropped on the source"),
                |_| {},
            )
            .await?;
        }
        let follower = match msr.workflow {
            Workflow::Live => None,
            Workflow::FallForward => Some(Destination::SourceReplica),
            Workflow::FallBack => Some(Destination::Source),
        };
        if let Some(follower) = follower {
            if !c.done("target-stream-started") {
                let first = Vsn(fin.last_vsn.0 + 1);
                self.update(|msr| {
                    if msr.target_stream.phase == StreamPhase::Standby {
                        msr.target_stream.phase = StreamPhase::Run;
                        msr.target_stream.first_vsn = first;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.0)?;
                let slot = slot_name(&self.config.migration.id, Stream::Target);
                let db = connect(&self.config, Destination::Target).await?;
                if !databases::slot_exists(&db, &slot).await? {
                    return Ok(Some(
                        "the target exporter to create its replication slot (is \"ferry export data from target\" running?)".into(),
                    ));
                }
                self.step(
                    to,
                    "target-stream-started",
                    &format!("the target exporter captures changes on the target (slot {slot}); VSNs continue at {first}"),
                    |_| {},
                )
                .await?;
            }
            let name = format!("{follower}-importer-switched");
            if !c.done(&name) {
                if follower == Destination::SourceReplica {
                    let left = self
                        .left_to_apply(Destination::SourceReplica, Stream::Source)
                        .await?;
                    if left > 0 {
                        return Ok(Some(format!(
                            "the source-replica importer to apply the last {left} event(s) of the source stream{}",
                            self.importer_health(Destination::SourceReplica)
                        )));
                    }
                }
                self.step(
                    to,
                    &name,
                    &format!("the {follower} importer now applies the target stream"),
                    |msr| msr.importers.set(follower, Some(Stream::Target)),
                )
                .await?;
            }
        }
        self.complete(to).await?;
        Ok(None)
    }

    /// One pass over the cutover to the source-replica or the source.
    async fn advance_back(&self, to: Destination) -> Result<Option<String>, String> {
        let msr = self.msr().await;
        let c = msr.cutover(to).clone();
        let view = self.view();
        let Some(fin) = view.finals.get(&Stream::Target).cloned() else {
            return Ok(Some(
                "the target exporter to export every change up to the end of the target's WAL and stop (is \"ferry export data from target\" running?)".into(),
            ));
        };
        if !c.done("target-exporter-stopped") {
            self.step(
                to,
                "target-exporter-stopped",
                &format!(
                    "target exporter stopped at LSN {}, last VSN {}",
                    fin.lsn, fin.last_vsn
                ),
                |_| {},
            )
            .await?;
        }
        let drained = format!("{to}-importer-drained");
        if !c.done(&drained) {
            let left = self.left_to_apply(to, Stream::Target).await?;
            if left > 0 {
                return Ok(Some(format!(
                    "the {to} importer to apply the last {left} event(s) of the target stream{}",
                    self.importer_health(to)
                )));
            }
            self.step(
                to,
                &drained,
                &format!("the {to} importer applied every event of the target stream and paused"),
                |msr| msr.importers.set(to, None),
            )
            .await?;
        }
        let seqs = format!("sequences-set-on-{to}");
        if !c.done(&seqs) {
            let db = connect(&self.config, to).await?;
            let n = databases::set_sequences(&db, to, &fin.sequences).await?;
            self.step(
                to,
                &seqs,
                &format!("{n} sequence(s) set on the {to} from the target's last values"),
                |_| {},
            )
            .await?;
        }
        if !c.done("target-slot-dropped") {
            let slot = slot_name(&self.config.migration.id, Stream::Target);
            let db = connect(&self.config, Destination::Target).await?;
            let late = now_ms() - fin.written_at_ms > 30_000;
            if !databases::drop_slot(&db, &slot, late).await? {
                return Ok(Some(format!(
                    "the target exporter to close its replication session on slot {slot}"
                )));
            }
            self.step(
                to,
                "target-slot-dropped",
                &format!("replication slot and publication {slot} dropped on the target"),
                |_| {},
            )
            .await?;
        }
        self.complete(to).await?;
        Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cutover_without_a_flag_takes_the_configured_workflow() {
        for w in [Workflow::Live, Workflow::FallForward, Workflow::FallBack] {
            assert_eq!(workflow_for(w, PrepareFor::None).unwrap(), w);
        }
    }

    #[test]
    fn a_flag_turns_a_live_migration_into_fall_back_or_fall_forward() {
        assert_eq!(
            workflow_for(Workflow::Live, PrepareFor::FallBack).unwrap(),
            Workflow::FallBack
        );
        assert_eq!(
            workflow_for(Workflow::Live, PrepareFor::FallForward).unwrap(),
            Workflow::FallForward
        );
        assert_eq!(
            workflow_for(Workflow::FallBack, PrepareFor::FallBack).unwrap(),
            Workflow::FallBack
        );
    }

    #[test]
    fn a_flag_that_contradicts_the_configured_workflow_is_refused_with_the_reason() {
        let e = workflow_for(Workflow::FallBack, PrepareFor::FallForward).unwrap_err();
        assert!(
            e.0.contains(
                "--prepare-for-fall-forward contradicts this migration's workflow, fall-back"
            ) && e.0.contains("migration.workflow"),
            "{e}"
        );
        assert!(workflow_for(Workflow::FallForward, PrepareFor::FallBack).is_err());
    }
}
