#![allow(clippy::unwrap_used)]

use super::*;

const ID: &str = "m1";
const NOW: i64 = 1_800_000_000_000;

fn ctx() -> RequestContext {
    RequestContext {
        snapshot_done: true,
        has_target: true,
        has_source_replica: true,
        now_ms: NOW,
    }
}

fn req(to: Destination, prepare_for: PrepareFor) -> CutoverRequest {
    CutoverRequest { to, prepare_for }
}

/// What the databases and Kafka would answer.
#[derive(Clone)]
struct World {
    final_record: Option<FinalFacts>,
    left: Vec<(Destination, i64)>,
    sequences: usize,
    slot_drop: SlotDrop,
    target_slot: bool,
}

impl Default for World {
    fn default() -> Self {
        World {
            final_record: Some(FinalFacts {
                lsn: "0/16B3748".into(),
                last_vsn: Vsn(41),
                written_at_ms: NOW - 1_000,
                after_stop_events: 0,
            }),
            left: vec![],
            sequences: 2,
            slot_drop: SlotDrop::Dropped,
            target_slot: true,
        }
    }
}

/// How a pass ended.
#[derive(Debug, PartialEq)]
enum End {
    Idle,
    Waiting(Wait),
    Completed,
}

/// One pass of a driver over `world`: the names of the steps it marked, and how it
/// ended. Like the coordinator's driver, it stops at a wait or at completion.
fn pass(
    msr: &mut MigrationStatus,
    to: Destination,
    world: &World,
) -> (Vec<String>, Vec<Action>, End) {
    let mut facts = Facts {
        now_ms: NOW,
        final_record: world.final_record.clone(),
        ..Facts::default()
    };
    let mut marked = Vec::new();
    let mut actions = Vec::new();
    for _ in 0..64 {
        let action = next(msr, to, ID, &facts);
        actions.push(action.clone());
        match action {
            Action::Idle => return (marked, actions, End::Idle),
            Action::Wait(w) => return (marked, actions, End::Waiting(w)),
            Action::Observe(Observe::LeftToApply { destination, .. }) => {
                let left = world
                    .left
                    .iter()
                    .find(|(d, _)| *d == destination)
                    .map_or(0, |(_, n)| *n);
                facts.left_to_apply.push((destination, left));
            }
            Action::Observe(Observe::TargetSlotExists { .. }) => {
                facts.target_slot_exists = Some(world.target_slot);
            }
            Action::Perform(Effect::SetSequences { .. }) => {
                facts.sequences_set = Some((world.sequences, 0));
            }
            Action::Perform(Effect::DropSlot { .. }) => {
                facts.slot_dropped = Some(world.slot_drop.clone());
            }
            Action::Perform(Effect::StartTargetStream { first }) => {
                start_target_stream(msr, first);
            }
            Action::Mark {
                name,
                description,
                also,
                ..
            } => {
                mark_done(msr, to, &name, &description, also, NOW);
                marked.push(name);
            }
            Action::Complete => {
                complete(msr, to, NOW);
                return (marked, actions, End::Completed);
            }
        }
    }
    panic!("the machine did not settle in 64 actions: {actions:?}");
}

fn requested(to_target_workflow: Workflow) -> MigrationStatus {
    let mut msr = MigrationStatus {
        migration_id: ID.into(),
        workflow: to_target_workflow,
        ..MigrationStatus::default()
    };
    request(&mut msr, &req(Destination::Target, PrepareFor::None), ctx()).unwrap();
    msr
}

fn done_names(msr: &MigrationStatus, to: Destination) -> Vec<String> {
    msr.cutover(to)
        .steps
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

#[test]
fn a_request_initiates_the_cutover_and_tells_the_exporter_to_stop() {
    let msr = requested(Workflow::Live);
    let c = msr.cutover(Destination::Target);
    assert_eq!(c.status, CutoverStatus::Initiated);
    assert_eq!(c.requested_at_ms, Some(NOW));
    assert_eq!(done_names(&msr, Destination::Target), ["requested"]);
    assert_eq!(msr.source_stream.phase, StreamPhase::Stop);
    assert!(c.waiting_for.is_some());
}

#[test]
fn a_repeated_request_changes_nothing_while_in_progress_and_is_refused_once_completed() {
    let mut msr = requested(Workflow::FallBack);
    let before = msr.clone();
    let later = RequestContext {
        now_ms: NOW + 5_000,
        ..ctx()
    };
    request(
        &mut msr,
        &req(Destination::Target, PrepareFor::FallBack),
        later,
    )
    .unwrap();
    assert_eq!(msr, before);
    // Half-way through, again nothing changes.
    let (_, _, end) = pass(
        &mut msr,
        Destination::Target,
        &World {
            left: vec![(Destination::Target, 7)],
            ..World::default()
        },
    );
    assert!(matches!(end, End::Waiting(Wait::Importer { left: 7, .. })));
    let half = msr.clone();
    request(&mut msr, &req(Destination::Target, PrepareFor::None), later).unwrap();
    assert_eq!(msr, half);
    pass(&mut msr, Destination::Target, &World::default());
    let e = request(&mut msr, &req(Destination::Target, PrepareFor::None), later).unwrap_err();
    assert!(e.0.contains("already COMPLETED"), "{e}");
}

#[test]
fn requests_are_refused_with_the_reason() {
    let base = MigrationStatus::default();
    let refused = |msr: &MigrationStatus, r: CutoverRequest, ctx: RequestContext| {
        let mut m = msr.clone();
        let e = request(&mut m, &r, ctx).unwrap_err();
        assert_eq!(&m, msr, "a refused request changed the record");
        e.0
    };
    let no_snapshot = RequestContext {
        snapshot_done: false,
        ..ctx()
    };
    assert!(refused(
        &base,
        req(Destination::Target, PrepareFor::None),
        no_snapshot
    )
    .contains("has not finished the snapshot"));
    let no_target = RequestContext {
        has_target: false,
        ..ctx()
    };
    assert!(
        refused(&base, req(Destination::Target, PrepareFor::None), no_target)
            .contains("no [target] database")
    );
    let no_replica = RequestContext {
        has_source_replica: false,
        ..ctx()
    };
    assert!(refused(
        &base,
        req(Destination::Target, PrepareFor::FallForward),
        no_replica
    )
    .contains("[source_replica]"));
    assert!(
        refused(&base, req(Destination::Source, PrepareFor::None), ctx())
            .contains("needs the cutover to target to be COMPLETED first")
    );
    assert!(
        refused(&base, req(Destination::Source, PrepareFor::FallBack), ctx())
            .contains("applies only to the cutover to target")
    );
    let mut live_done = requested(Workflow::Live);
    pass(&mut live_done, Destination::Target, &World::default());
    assert!(refused(
        &live_done,
        req(Destination::Source, PrepareFor::None),
        ctx()
    )
    .contains("initiated with --prepare-for-fall-back"));
    let mut ended = base.clone();
    ended.ended_at_ms = Some(NOW);
    assert!(
        refused(&ended, req(Destination::Target, PrepareFor::None), ctx()).contains("was ended")
    );
}

#[test]
fn nothing_happens_for_a_cutover_not_in_progress() {
    let mut msr = MigrationStatus::default();
    assert_eq!(
        next(&msr, Destination::Target, ID, &Facts::default()),
        Action::Idle
    );
    let mut started = requested(Workflow::Live);
    started.ended_at_ms = Some(NOW);
    assert_eq!(
        next(&started, Destination::Target, ID, &Facts::default()),
        Action::Idle
    );
    msr = requested(Workflow::Live);
    pass(&mut msr, Destination::Target, &World::default());
    assert_eq!(
        next(&msr, Destination::Target, ID, &Facts::default()),
        Action::Idle
    );
}

#[test]
fn without_the_final_record_the_cutover_waits_for_the_exporter() {
    let mut msr = requested(Workflow::Live);
    let world = World {
        final_record: None,
        ..World::default()
    };
    let (marked, _, end) = pass(&mut msr, Destination::Target, &world);
    assert!(marked.is_empty());
    assert_eq!(end, End::Waiting(Wait::FinalRecord(Stream::Source)));
    assert!(Wait::FinalRecord(Stream::Source)
        .describe("")
        .contains("\"ferry export data from source\""));
}

#[test]
fn each_workflow_runs_its_steps_in_order_to_completed() {
    let cases = [
        (
            Workflow::Live,
            vec![
                "source-exporter-stopped",
                "target-importer-drained",
                "sequences-set-on-target",
                "source-slot-dropped",
            ],
        ),
        (
            Workflow::FallForward,
            vec![
                "source-exporter-stopped",
                "target-importer-drained",
                "sequences-set-on-target",
                "source-slot-dropped",
                "target-stream-started",
                "source-replica-importer-switched",
            ],
        ),
        (
            Workflow::FallBack,
            vec![
                "source-exporter-stopped",
                "target-importer-drained",
                "sequences-set-on-target",
                "source-slot-dropped",
                "target-stream-started",
                "source-importer-switched",
            ],
        ),
    ];
    for (workflow, expected) in cases {
        let mut msr = requested(workflow);
        let (marked, _, end) = pass(&mut msr, Destination::Target, &World::default());
        assert_eq!(marked, expected, "{workflow:?}");
        assert_eq!(end, End::Completed);
        let c = msr.cutover(Destination::Target);
        assert_eq!(c.status, CutoverStatus::Completed);
        assert_eq!(c.waiting_for, None);
        // What the steps changed besides the list.
        assert_eq!(msr.importers.get(Destination::Target), None);
        match workflow {
            Workflow::Live => assert_eq!(msr.target_stream.phase, StreamPhase::Standby),
            _ => {
                assert_eq!(msr.target_stream.phase, StreamPhase::Run);
                assert_eq!(msr.target_stream.first_vsn, Vsn(42));
                let f = follower(workflow).unwrap();
                assert_eq!(msr.importers.get(f), Some(Stream::Target));
            }
        }
    }
}

#[test]
fn the_cutovers_back_run_their_steps_after_the_cutover_to_target() {
    for (workflow, to) in [
        (Workflow::FallBack, Destination::Source),
        (Workflow::FallForward, Destination::SourceReplica),
    ] {
        let mut msr = requested(workflow);
        pass(&mut msr, Destination::Target, &World::default());
        request(&mut msr, &req(to, PrepareFor::None), ctx()).unwrap();
        assert_eq!(msr.target_stream.phase, StreamPhase::Stop);
        let (marked, _, end) = pass(&mut msr, to, &World::default());
        assert_eq!(
            marked,
            [
                "target-exporter-stopped".to_owned(),
                format!("{to}-importer-drained"),
                format!("sequences-set-on-{to}"),
                "target-slot-dropped".to_owned(),
            ]
        );
        assert_eq!(end, End::Completed);
        assert_eq!(msr.importers.get(to), None);
        let descriptions: Vec<&str> = msr
            .cutover(to)
            .steps
            .iter()
            .map(|s| s.description.as_str())
            .collect();
        let dropped = format!(
            "replication slot and publication {} dropped on the target",
            slot_name(ID, Stream::Target)
        );
        assert!(descriptions.contains(&dropped.as_str()), "{descriptions:?}");
    }
}

#[test]
fn every_wait_names_what_it_waits_for_and_the_pass_goes_on_once_it_is_there() {
    let waits = [
        (
            World {
                left: vec![(Destination::Target, 3)],
                ..World::default()
            },
            Wait::Importer {
                destination: Destination::Target,
                stream: Stream::Source,
                left: 3,
            },
            "source-exporter-stopped",
        ),
        (
            World {
                slot_drop: SlotDrop::InUse,
                ..World::default()
            },
            Wait::SlotSession {
                stream: Stream::Source,
                slot: slot_name(ID, Stream::Source),
            },
            "sequences-set-on-target",
        ),
        (
            World {
                slot_drop: SlotDrop::Refused("replication slot is active".into()),
                ..World::default()
            },
            Wait::SlotDropRefused {
                on: Destination::Source,
                slot: slot_name(ID, Stream::Source),
                reason: "replication slot is active".into(),
            },
            "sequences-set-on-target",
        ),
        (
            World {
                target_slot: false,
                ..World::default()
            },
            Wait::TargetSlot,
            "source-slot-dropped",
        ),
        (
            World {
                left: vec![(Destination::SourceReplica, 5)],
                ..World::default()
            },
            Wait::Importer {
                destination: Destination::SourceReplica,
                stream: Stream::Source,
                left: 5,
            },
            "target-stream-started",
        ),
    ];
    for (world, wait, last_done) in waits {
        let mut msr = requested(Workflow::FallForward);
        let (_, _, end) = pass(&mut msr, Destination::Target, &world);
        assert_eq!(end, End::Waiting(wait.clone()));
        assert_eq!(
            done_names(&msr, Destination::Target).last().unwrap(),
            last_done
        );
        let text = wait.describe(" (1 instance(s) running)");
        assert!(!text.is_empty());
        if let Wait::SlotDropRefused { .. } = wait {
            assert!(
                text.contains("pending") && text.contains("\"replication slot is active\""),
                "{text}"
            );
        }
        if let Wait::Importer { left, .. } = wait {
            assert!(
                text.contains(&format!("the last {left} event(s)")),
                "{text}"
            );
            assert!(text.ends_with("(1 instance(s) running)"), "{text}");
        }
        // The same facts again: the same wait, nothing marked twice.
        let before = msr.clone();
        let (marked, _, end) = pass(&mut msr, Destination::Target, &world);
        assert!(marked.is_empty());
        assert_eq!(end, End::Waiting(wait));
        assert_eq!(msr, before);
        // Once the fact is there, the cutover completes.
        let (_, _, end) = pass(&mut msr, Destination::Target, &World::default());
        assert_eq!(end, End::Completed);
    }
}

#[test]
fn a_restart_between_any_two_steps_resumes_at_the_first_step_not_done() {
    for workflow in [Workflow::Live, Workflow::FallForward, Workflow::FallBack] {
        let all = steps(Destination::Target, workflow);
        for k in 0..=all.len() {
            // A coordinator that marked k steps and was killed.
            let mut msr = requested(workflow);
            let mut facts = Facts {
                now_ms: NOW,
                final_record: World::default().final_record,
                left_to_apply: vec![(Destination::Target, 0), (Destination::SourceReplica, 0)],
                sequences_set: Some((2, 0)),
                slot_dropped: Some(SlotDrop::Dropped),
                target_slot_exists: Some(true),
            };
            let mut marks = 0;
            while marks < k {
                match next(&msr, Destination::Target, ID, &facts) {
                    Action::Mark {
                        name,
                        description,
                        also,
                        ..
                    } => {
                        mark_done(
                            &mut msr,
                            Destination::Target,
                            &name,
                            &description,
                            also,
                            NOW,
                        );
                        marks += 1;
                    }
                    Action::Perform(Effect::StartTargetStream { first }) => {
                        start_target_stream(&mut msr, first)
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            facts = Facts {
                now_ms: NOW,
                final_record: World::default().final_record,
                ..Facts::default()
            };
            // The restarted coordinator knows only the record.
            let first = next(&msr, Destination::Target, ID, &facts);
            if k == all.len() {
                assert_eq!(first, Action::Complete);
                continue;
            }
            let expected_step = all[k];
            match &first {
                Action::Mark { step, .. } => assert_eq!(*step, expected_step),
                Action::Observe(_) | Action::Perform(_) => {}
                other => panic!("{workflow:?} after {k} steps: {other:?}"),
            }
            let (marked, _, end) = pass(&mut msr, Destination::Target, &World::default());
            let expected: Vec<String> = all[k..]
                .iter()
                .map(|s| step_name(*s, Destination::Target, workflow))
                .collect();
            assert_eq!(marked, expected, "{workflow:?} after {k} steps");
            assert_eq!(end, End::Completed);
            // Every step is in the record exactly once.
            let names = done_names(&msr, Destination::Target);
            let mut unique = names.clone();
            unique.dedup();
            assert_eq!(names, unique);
        }
    }
}

#[test]
fn an_effect_repeated_after_a_crash_is_asked_for_again_and_the_step_marked_once() {
    let mut msr = requested(Workflow::Live);
    let mut facts = Facts {
        now_ms: NOW,
        final_record: World::default().final_record,
        left_to_apply: vec![(Destination::Target, 0)],
        ..Facts::default()
    };
    // Up to the sequences: performed, then the coordinator dies before marking.
    loop {
        match next(&msr, Destination::Target, ID, &facts) {
            Action::Mark {
                name,
                description,
                also,
                ..
            } => mark_done(
                &mut msr,
                Destination::Target,
                &name,
                &description,
                also,
                NOW,
            ),
            Action::Perform(Effect::SetSequences { on }) => {
                assert_eq!(on, Destination::Target);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    facts.left_to_apply.clear();
    assert_eq!(
        next(&msr, Destination::Target, ID, &facts),
        Action::Perform(Effect::SetSequences {
            on: Destination::Target
        })
    );
    facts.sequences_set = Some((3, 0));
    match next(&msr, Destination::Target, ID, &facts) {
        Action::Mark {
            name, description, ..
        } => {
            assert_eq!(name, "sequences-set-on-target");
            assert_eq!(
                description,
                "3 sequence(s) set on the target from the source's last values"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_slot_session_still_attached_after_the_grace_period_is_ended() {
    let mut msr = requested(Workflow::Live);
    for name in [
        "source-exporter-stopped",
        "target-importer-drained",
        "sequences-set-on-target",
    ] {
        mark_done(&mut msr, Destination::Target, name, "", Also::Nothing, NOW);
    }
    let written = NOW - 1_000;
    let facts = |now_ms| Facts {
        now_ms,
        final_record: Some(FinalFacts {
            lsn: "0/1".into(),
            last_vsn: Vsn(9),
            written_at_ms: written,
            after_stop_events: 0,
        }),
        ..Facts::default()
    };
    let drop = |now_ms| match next(&msr, Destination::Target, ID, &facts(now_ms)) {
        Action::Perform(Effect::DropSlot {
            on,
            slot,
            terminate,
        }) => {
            assert_eq!(on, Destination::Source);
            assert_eq!(slot, slot_name(ID, Stream::Source));
            terminate
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!(!drop(written + 5_000));
    assert!(!drop(written + SLOT_SESSION_GRACE_MS));
    assert!(drop(written + SLOT_SESSION_GRACE_MS + 1));
}

#[test]
fn the_target_stream_starts_once_above_the_source_streams_last_vsn() {
    let mut msr = requested(Workflow::FallBack);
    start_target_stream(&mut msr, Vsn(42));
    assert_eq!(msr.target_stream.phase, StreamPhase::Run);
    assert_eq!(msr.target_stream.first_vsn, Vsn(42));
    // Again (after a restart): unchanged.
    start_target_stream(&mut msr, Vsn(99));
    assert_eq!(msr.target_stream.first_vsn, Vsn(42));
}

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
        e.0.contains("--prepare-for-fall-forward contradicts this migration's workflow, fall-back")
            && e.0.contains("migration.workflow"),
        "{e}"
    );
    assert!(workflow_for(Workflow::FallForward, PrepareFor::FallBack).is_err());
}

#[test]
fn sequences_raised_above_the_old_primarys_values_are_said_in_the_step() {
    let mut msr = requested(Workflow::Live);
    for name in ["source-exporter-stopped", "target-importer-drained"] {
        mark_done(&mut msr, Destination::Target, name, "", Also::Nothing, NOW);
    }
    let facts = Facts {
        now_ms: NOW,
        final_record: World::default().final_record,
        sequences_set: Some((4, 1)),
        ..Facts::default()
    };
    match next(&msr, Destination::Target, ID, &facts) {
        Action::Mark { description, .. } => assert_eq!(
            description,
            "4 sequence(s) set on the target from the source's last values; 1 of them raised to the largest value in their columns (the last value was behind the rows)"
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn changes_committed_after_the_stop_marker_are_counted_in_the_step() {
    let msr = requested(Workflow::Live);
    let facts = Facts {
        now_ms: NOW,
        final_record: Some(FinalFacts {
            lsn: "0/5".into(),
            last_vsn: Vsn(41),
            written_at_ms: NOW,
            after_stop_events: 12,
        }),
        ..Facts::default()
    };
    match next(&msr, Destination::Target, ID, &facts) {
        Action::Mark {
            name, description, ..
        } => {
            assert_eq!(name, "source-exporter-stopped");
            assert_eq!(
                description,
                "source exporter stopped at LSN 0/5, last VSN 41; 12 change(s) committed on the source after the stop marker were not exported (they stay there)"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}
