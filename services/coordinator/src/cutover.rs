//! Cutover as a pure state machine (DESIGN.md §6): what a request changes in the
//! migration status record, and, on every pass, the next action from the record and
//! the facts observed so far. Nothing here reads a database or Kafka; the driver
//! ([`crate::migration`]) observes facts and performs effects as [`next`] asks, then
//! asks again.
//!
//! The record's list of done steps is the only progress there is: a coordinator
//! restarted between any two steps starts a pass with no facts, and [`next`] resumes at
//! the first step not done. Every effect is idempotent (setting sequences to recorded
//! values, dropping a slot that may be gone, starting a stream that may run), so an
//! effect performed before a crash and performed again after it changes nothing.
//!
//! Cutover to target, steps in order:
//!
//! 1. `source-exporter-stopped`: the source exporter's final record is in `_state`
//!    (every change up to the end of the source's WAL at the request is in Kafka);
//! 2. `target-importer-drained`: the positions stored in the target reached the final
//!    end offsets; the target importer is paused;
//! 3. `sequences-set-on-target`;
//! 4. `source-slot-dropped`: the source slot and publication are gone (so that a
//!    fall-back importer never writes to a database with a Ferry slot capturing);
//! 5. with fall-forward or fall-back: `target-stream-started` (the target exporter
//!    created its slot; VSNs continue above the source stream's last), then
//!    `source-replica-importer-switched` (after it drained the source stream) or
//!    `source-importer-switched`;
//! 6. COMPLETED.
//!
//! Cutover to source-replica / to source: `target-exporter-stopped`,
//! `<to>-importer-drained`, `sequences-set-on-<to>`, `target-slot-dropped`, COMPLETED.

use ferry_shared::position::Vsn;
use ferry_shared::state::{CutoverStatus, CutoverStep, MigrationStatus, StreamPhase, Workflow};
use ferry_shared::topics::{slot_name, Destination, Stream};
use serde::{Deserialize, Serialize};

pub use crate::databases::SlotDrop;

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

/// A request the coordinator refuses, with the reason and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

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

/// What a request is checked against besides the record.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext {
    /// The source exporter's stored checkpoint says the snapshot is done.
    pub snapshot_done: bool,
    /// A `[target]` database is configured.
    pub has_target: bool,
    /// A `[source_replica]` database is configured.
    pub has_source_replica: bool,
    /// Now, milliseconds since the epoch.
    pub now_ms: i64,
}

/// Records a cutover request in `msr`, or refuses it with the reason. A request for a
/// cutover in progress changes nothing (requests are idempotent); one for a completed
/// cutover, or after the migration ended, is refused.
pub fn request(
    msr: &mut MigrationStatus,
    req: &CutoverRequest,
    ctx: RequestContext,
) -> Result<(), Refused> {
    if msr.ended_at_ms.is_some() {
        return Err(Refused(
            "the migration was ended (ferry end migration); start a new one".into(),
        ));
    }
    match msr.cutover(req.to).status {
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
            if !ctx.snapshot_done {
                return Err(Refused(
                    "the source exporter has not finished the snapshot yet (no stored checkpoint says so): run \"ferry export data from source\" and wait until it streams changes, then initiate the cutover again".into(),
                ));
            }
            if !ctx.has_target {
                return Err(Refused("no [target] database is configured".into()));
            }
            let workflow = workflow_for(msr.workflow, req.prepare_for)?;
            if workflow == Workflow::FallForward && !ctx.has_source_replica {
                return Err(Refused("the fall-forward workflow needs a source-replica: add a [source_replica] section to ferry.toml and run \"ferry import data to source-replica\" from the start of the migration".into()));
            }
            msr.workflow = workflow;
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
    c.requested_at_ms = Some(ctx.now_ms);
    c.steps.push(CutoverStep {
        name: "requested".into(),
        description: "cutover requested; the exporter was told to stop at the end of the WAL"
            .into(),
        done_at_ms: ctx.now_ms,
    });
    c.waiting_for = Some("the exporter to export up to the end of the WAL and stop".into());
    Ok(())
}

/// The steps of a cutover after its request, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The stopped stream's exporter wrote its final record.
    ExporterStopped,
    /// The destination's importer applied the stopped stream to its end and paused.
    ImporterDrained,
    /// The destination's sequences were set from the old primary's.
    SequencesSet,
    /// The stopped stream's slot and publication were dropped.
    SlotDropped,
    /// (fall-back, fall-forward) The target exporter created its slot.
    TargetStreamStarted,
    /// (fall-back, fall-forward) The follower's importer applies the target stream.
    FollowerSwitched,
}

/// The stream a cutover to `to` stops: the source stream for the cutover to target,
/// the target stream for the cutovers back.
pub fn stopped_stream(to: Destination) -> Stream {
    if to == Destination::Target {
        Stream::Source
    } else {
        Stream::Target
    }
}

/// The database that keeps following the target after a cutover to target.
pub fn follower(workflow: Workflow) -> Option<Destination> {
    match workflow {
        Workflow::Live => None,
        Workflow::FallForward => Some(Destination::SourceReplica),
        Workflow::FallBack => Some(Destination::Source),
    }
}

/// The database a stream is read from.
fn database_of(stream: Stream) -> Destination {
    match stream {
        Stream::Source => Destination::Source,
        Stream::Target => Destination::Target,
    }
}

/// The steps of the cutover to `to` under `workflow`, in order.
pub fn steps(to: Destination, workflow: Workflow) -> Vec<Step> {
    let mut steps = vec![
        Step::ExporterStopped,
        Step::ImporterDrained,
        Step::SequencesSet,
        Step::SlotDropped,
    ];
    if to == Destination::Target && follower(workflow).is_some() {
        steps.extend([Step::TargetStreamStarted, Step::FollowerSwitched]);
    }
    steps
}

/// The name of `step` in the record (`ferry cutover status` shows it).
pub fn step_name(step: Step, to: Destination, workflow: Workflow) -> String {
    let stream = stopped_stream(to);
    match step {
        Step::ExporterStopped => format!("{stream}-exporter-stopped"),
        Step::ImporterDrained => format!("{to}-importer-drained"),
        Step::SequencesSet => format!("sequences-set-on-{to}"),
        Step::SlotDropped => format!("{stream}-slot-dropped"),
        Step::TargetStreamStarted => "target-stream-started".into(),
        Step::FollowerSwitched => match follower(workflow) {
            Some(f) => format!("{f}-importer-switched"),
            None => "follower-importer-switched".into(),
        },
    }
}

/// The stopped stream's final record, as far as the steps need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalFacts {
    /// Where its exporter stopped in its database.
    pub lsn: String,
    /// Its last VSN.
    pub last_vsn: Vsn,
    /// When it was written.
    pub written_at_ms: i64,
    /// Changes committed after the stop marker, not exported (a lower bound).
    pub after_stop_events: u64,
}

/// What one pass has observed; `None` is "not observed yet".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Now, milliseconds since the epoch.
    pub now_ms: i64,
    /// The stopped stream's final record, if written.
    pub final_record: Option<FinalFacts>,
    /// Records of the stopped stream each destination still has to apply.
    pub left_to_apply: Vec<(Destination, i64)>,
    /// Sequences set on the destination, and how many of them were raised above the
    /// old primary's value to the largest value in their columns.
    pub sequences_set: Option<(usize, usize)>,
    /// What dropping the stopped stream's slot and publication came to.
    pub slot_dropped: Option<SlotDrop>,
    /// Whether the target exporter's slot exists.
    pub target_slot_exists: Option<bool>,
}

impl Facts {
    fn left(&self, destination: Destination) -> Option<i64> {
        self.left_to_apply
            .iter()
            .find(|(d, _)| *d == destination)
            .map(|(_, n)| *n)
    }
}

/// A slot still in use this long after the final record is ended by force.
pub const SLOT_SESSION_GRACE_MS: i64 = 30_000;

/// What the cutover waits for (shown as `waiting_for`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The stream's exporter to write its final record.
    FinalRecord(Stream),
    /// An importer to apply the last events of a stream.
    Importer {
        /// Which importer.
        destination: Destination,
        /// Of which stream.
        stream: Stream,
        /// Records left.
        left: i64,
    },
    /// The stream's exporter to end its replication session on the slot.
    SlotSession {
        /// The stopped stream.
        stream: Stream,
        /// Its slot.
        slot: String,
    },
    /// The database to allow dropping the slot: it refused, saying why (a pending
    /// step, tried again every pass, not a failure).
    SlotDropRefused {
        /// The database the slot is on.
        on: Destination,
        /// Its slot.
        slot: String,
        /// The database's reason.
        reason: String,
    },
    /// The target exporter to create its slot.
    TargetSlot,
}

impl Wait {
    /// The text for `waiting_for`; `importer_health` describes the importers of an
    /// [`Wait::Importer`] wait (how many run, or why none does).
    pub fn describe(&self, importer_health: &str) -> String {
        match self {
            Wait::FinalRecord(s) => format!(
                "the {s} exporter to export every change up to the end of the {s}'s WAL and stop (is \"ferry export data from {s}\" running?)"
            ),
            Wait::Importer {
                destination,
                stream,
                left,
            } => format!(
                "the {destination} importer to apply the last {left} event(s) of the {stream} stream{importer_health}"
            ),
            Wait::SlotSession { stream, slot } => format!(
                "the {stream} exporter to close its replication session on slot {slot}"
            ),
            Wait::SlotDropRefused { on, slot, reason } => format!(
                "the {on} to allow dropping replication slot {slot} (pending, tried again every second: it refused with \"{reason}\"; YugabyteDB allows it about 5 minutes after the slot's consumer stopped)"
            ),
            Wait::TargetSlot => "the target exporter to create its replication slot (is \"ferry export data from target\" running?)".into(),
        }
    }
}

/// A fact the driver must observe before the machine can go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observe {
    /// Records of `stream` that `destination`'s importer has not applied (from the
    /// positions stored in its database and the final record's end offsets).
    LeftToApply {
        /// Which importer.
        destination: Destination,
        /// Which stream.
        stream: Stream,
    },
    /// Whether the target exporter's slot exists on the target and is ready (its
    /// creation reached a consistent point: every later commit is streamed).
    TargetSlotExists {
        /// The slot.
        slot: String,
    },
}

/// An idempotent change the driver performs in a database or the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Set the sequences recorded in the stopped stream's final record on `on`.
    SetSequences {
        /// The destination.
        on: Destination,
    },
    /// Drop the slot and publication `slot` in `on` (ending a session still attached
    /// when `terminate`, where the engine allows); observed as [`Facts::slot_dropped`].
    DropSlot {
        /// The database.
        on: Destination,
        /// Slot and publication name.
        slot: String,
        /// End a session still using the slot.
        terminate: bool,
    },
    /// Let the target stream run from `first` (record change, if still on standby).
    StartTargetStream {
        /// Its first VSN: one above the source stream's last.
        first: Vsn,
    },
}

/// What marking a step done changes in the record besides the step list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Also {
    /// Nothing.
    Nothing,
    /// The destination's importer pauses (applies no stream).
    PauseImporter(Destination),
    /// The destination's importer applies the target stream.
    SwitchToTargetStream(Destination),
}

impl Also {
    /// Applies the change to the record.
    pub fn apply(self, msr: &mut MigrationStatus) {
        match self {
            Also::Nothing => {}
            Also::PauseImporter(d) => msr.importers.set(d, None),
            Also::SwitchToTargetStream(d) => msr.importers.set(d, Some(Stream::Target)),
        }
    }
}

/// The next action of a cutover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The cutover is not in progress (not requested, completed, or the migration
    /// ended): nothing to do.
    Idle,
    /// Wait; the pass ends.
    Wait(Wait),
    /// Observe a fact, then ask again.
    Observe(Observe),
    /// Perform an effect, record its outcome in the facts, then ask again.
    Perform(Effect),
    /// Record the step done (with its description and `also`), then ask again.
    Mark {
        /// The step.
        step: Step,
        /// Its name in the record.
        name: String,
        /// What was done, for the operator.
        description: String,
        /// The change that goes with it.
        also: Also,
    },
    /// Every step is done: mark the cutover COMPLETED.
    Complete,
}

/// The next action of the cutover to `to`, from the record and this pass's facts.
pub fn next(msr: &MigrationStatus, to: Destination, migration_id: &str, facts: &Facts) -> Action {
    let c = msr.cutover(to);
    if msr.ended_at_ms.is_some() || c.status != CutoverStatus::Initiated {
        return Action::Idle;
    }
    let stream = stopped_stream(to);
    let Some(fin) = &facts.final_record else {
        return Action::Wait(Wait::FinalRecord(stream));
    };
    let workflow = msr.workflow;
    for step in steps(to, workflow) {
        let name = step_name(step, to, workflow);
        if c.done(&name) {
            continue;
        }
        let mark = |description: String, also: Also| Action::Mark {
            step,
            name: name.clone(),
            description,
            also,
        };
        return match step {
            Step::ExporterStopped => {
                let mut description = format!(
                    "{stream} exporter stopped at LSN {}, last VSN {}",
                    fin.lsn, fin.last_vsn
                );
                if fin.after_stop_events > 0 {
                    description.push_str(&format!(
                        "; {} change(s) committed on the {} after the stop marker were not exported (they stay there)",
                        fin.after_stop_events,
                        database_of(stream)
                    ));
                }
                mark(description, Also::Nothing)
            }
            Step::ImporterDrained => match facts.left(to) {
                None => Action::Observe(Observe::LeftToApply {
                    destination: to,
                    stream,
                }),
                Some(left) if left > 0 => Action::Wait(Wait::Importer {
                    destination: to,
                    stream,
                    left,
                }),
                Some(_) => mark(
                    format!(
                        "the {to} importer applied every event of the {stream} stream and paused"
                    ),
                    Also::PauseImporter(to),
                ),
            },
            Step::SequencesSet => match facts.sequences_set {
                None => Action::Perform(Effect::SetSequences { on: to }),
                Some((n, 0)) => mark(
                    format!("{n} sequence(s) set on the {to} from the {stream}'s last values"),
                    Also::Nothing,
                ),
                Some((n, raised)) => mark(
                    format!("{n} sequence(s) set on the {to} from the {stream}'s last values; {raised} of them raised to the largest value in their columns (the last value was behind the rows)"),
                    Also::Nothing,
                ),
            },
            Step::SlotDropped => {
                let slot = slot_name(migration_id, stream);
                let on = database_of(stream);
                match &facts.slot_dropped {
                    None => Action::Perform(Effect::DropSlot {
                        on,
                        slot,
                        // The exporter ends its replication session right after the
                        // final record; one still attached a while later is ended.
                        terminate: facts.now_ms - fin.written_at_ms > SLOT_SESSION_GRACE_MS,
                    }),
                    Some(SlotDrop::InUse) => Action::Wait(Wait::SlotSession { stream, slot }),
                    Some(SlotDrop::Refused(reason)) => {
                        Action::Wait(Wait::SlotDropRefused { on, slot, reason: reason.clone() })
                    }
                    Some(SlotDrop::Dropped) => mark(
                        format!("replication slot and publication {slot} dropped on the {on}"),
                        Also::Nothing,
                    ),
                }
            }
            Step::TargetStreamStarted => {
                let first = Vsn(fin.last_vsn.0 + 1);
                let slot = slot_name(migration_id, Stream::Target);
                if msr.target_stream.phase == StreamPhase::Standby {
                    Action::Perform(Effect::StartTargetStream { first })
                } else {
                    match facts.target_slot_exists {
                        None => Action::Observe(Observe::TargetSlotExists { slot }),
                        Some(false) => Action::Wait(Wait::TargetSlot),
                        Some(true) => mark(
                            format!("the target exporter captures changes on the target (slot {slot}); VSNs continue at {first}"),
                            Also::Nothing,
                        ),
                    }
                }
            }
            Step::FollowerSwitched => {
                let Some(follower) = follower(workflow) else {
                    continue;
                };
                let left = if follower == Destination::SourceReplica {
                    facts.left(follower)
                } else {
                    // The source applied nothing of the source stream: nothing to drain.
                    Some(0)
                };
                match left {
                    None => Action::Observe(Observe::LeftToApply {
                        destination: follower,
                        stream,
                    }),
                    Some(left) if left > 0 => Action::Wait(Wait::Importer {
                        destination: follower,
                        stream,
                        left,
                    }),
                    Some(_) => mark(
                        format!("the {follower} importer now applies the target stream"),
                        Also::SwitchToTargetStream(follower),
                    ),
                }
            }
        };
    }
    Action::Complete
}

/// Applies [`Effect::StartTargetStream`] to the record: the target stream runs from
/// `first`, unless it left standby already.
pub fn start_target_stream(msr: &mut MigrationStatus, first: Vsn) {
    if msr.target_stream.phase == StreamPhase::Standby {
        msr.target_stream.phase = StreamPhase::Run;
        msr.target_stream.first_vsn = first;
    }
}

/// Records step `name` done (once) and applies `also`.
pub fn mark_done(
    msr: &mut MigrationStatus,
    to: Destination,
    name: &str,
    description: &str,
    also: Also,
    now_ms: i64,
) {
    also.apply(msr);
    let c = msr.cutover_mut(to);
    if !c.done(name) {
        c.steps.push(CutoverStep {
            name: name.to_owned(),
            description: description.to_owned(),
            done_at_ms: now_ms,
        });
    }
}

/// Marks the cutover COMPLETED.
pub fn complete(msr: &mut MigrationStatus, to: Destination, now_ms: i64) {
    let c = msr.cutover_mut(to);
    c.status = CutoverStatus::Completed;
    c.completed_at_ms = Some(now_ms);
    c.waiting_for = None;
}

#[cfg(test)]
mod tests;
