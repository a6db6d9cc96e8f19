//! The "YugabyteDB surface" profile: the fall-back and fall-forward round trips on
//! PostgreSQL with `target.engine = "yugabytedb"`, Ferry connecting to the target as a
//! role of its own. `pg_stat_statements` records every statement that role sends; after
//! the whole round trip (snapshot, changes, both cutovers) none may use a call
//! YugabyteDB lacks (../shared/FACTS.md, "YugabyteDB as a target"), and the data is
//! exact at every COMPLETED.
//!
//! Replication-protocol commands (`CREATE_REPLICATION_SLOT ... NOEXPORT_SNAPSHOT`,
//! `START_REPLICATION`) are not statements and are not recorded: the target stream is
//! changes-only by construction (no exported snapshot), which the exporter's own tests
//! show.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use anyhow::{Context, Result};
use common::*;
use ferry_shared::config::{Engine, Secret};
use ferry_shared::topics::{Destination, Stream};
use ferry_testkit::unique_name;

/// Calls YugabyteDB does not have (or that behave so differently that Ferry must not
/// send them to it), as they would appear in a statement's text.
const LACKING: &[&str] = &[
    "ctid",
    "pg_current_wal_lsn",
    "txid_current",
    "pg_logical_emit_message",
    "pg_export_snapshot",
    "set transaction snapshot",
    "pg_partition_tree",
    "pg_wal_lsn_diff",
    "pg_terminate_backend",
];

/// Makes Ferry reach the target as a role of its own, as YugabyteDB; returns the role.
async fn target_as_yugabytedb(h: &mut Harness) -> Result<String> {
    let role = unique_name("ferry_yb")
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let password = "yb-surface-secret";
    h.target
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN SUPERUSER REPLICATION PASSWORD '{password}'; \
             CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
        ))
        .await
        .context("creating the role and pg_stat_statements (the stack preloads it)")?;
    h.kill_coordinator().await;
    let target = h.config.target.as_mut().unwrap();
    target.engine = Engine::Yugabytedb;
    target.user = role.clone();
    target.password = Secret::new(password);
    h.start_coordinator().await?;
    Ok(role)
}

/// Every statement `role` sent to the target's database.
async fn statements_of(h: &Harness, role: &str) -> Result<Vec<String>> {
    let database = h.config.target.as_ref().unwrap().database.clone();
    Ok(h.target
        .query(
            "SELECT s.query FROM pg_stat_statements s \
             JOIN pg_roles r ON r.oid = s.userid JOIN pg_database d ON d.oid = s.dbid \
             WHERE r.rolname = $1 AND d.datname = $2",
            &[&role, &database],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// No statement uses a call YugabyteDB lacks; the statements Ferry needs are there.
async fn assert_surface(h: &Harness, role: &str) -> Result<()> {
    let statements = statements_of(h, role).await?;
    let used: Vec<(&str, &String)> = statements
        .iter()
        .flat_map(|q| {
            let lower = q.to_lowercase();
            LACKING
                .iter()
                .filter(move |call| lower.contains(*call))
                .map(move |call| (*call, q))
        })
        .collect();
    assert!(
        used.is_empty(),
        "statements sent to the YugabyteDB target use what it lacks: {used:#?}"
    );
    // What was recorded is Ferry's work on the target: its YugabyteDB preflight,
    // applying, positions, markers.
    for needed in [
        "select version()",
        "has_parameter_privilege",
        "ferry_metadata.positions",
        "ferry_metadata.stop_markers",
        "copy ",
    ] {
        assert!(
            statements.iter().any(|q| q.to_lowercase().contains(needed)),
            "no statement with {needed:?} among {} recorded",
            statements.len()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fall_back_to_a_yugabytedb_target_uses_only_what_yugabytedb_has() -> Result<()> {
    let mut h = Harness::new("ybfback").await?;
    let role = target_as_yugabytedb(&mut h).await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.exporter(Stream::Target);
    h.importer(Destination::Source);
    writes(&h.source, "before", 20).await?;
    h.wait_equal(Side::Source, Side::Target, "before cutover")
        .await?;
    h.wait_snapshot_done().await?;
    h.cutover_completed("target", "fall-back").await?;
    h.assert_equal_now(
        Side::Source,
        Side::Target,
        "at COMPLETED of cutover to target",
    )
    .await?;
    writes(&h.target, "on target", 20).await?;
    h.wait_equal(Side::Target, Side::Source, "fall-back stream")
        .await?;
    h.cutover_completed("source", "none").await?;
    h.assert_equal_now(
        Side::Target,
        Side::Source,
        "at COMPLETED of cutover to source",
    )
    .await?;
    assert_surface(&h, &role).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fall_forward_from_a_yugabytedb_target_uses_only_what_yugabytedb_has() -> Result<()> {
    let mut h = Harness::new("ybfforward").await?;
    let role = target_as_yugabytedb(&mut h).await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.importer(Destination::SourceReplica);
    h.exporter(Stream::Target);
    writes(&h.source, "before", 20).await?;
    h.wait_equal(Side::Source, Side::Target, "before cutover")
        .await?;
    h.wait_equal(Side::Source, Side::Replica, "replica before cutover")
        .await?;
    h.wait_snapshot_done().await?;
    h.cutover_completed("target", "fall-forward").await?;
    writes(&h.target, "on target", 20).await?;
    h.wait_equal(Side::Target, Side::Replica, "fall-forward stream")
        .await?;
    h.cutover_completed("source-replica", "none").await?;
    h.assert_equal_now(
        Side::Target,
        Side::Replica,
        "at COMPLETED of cutover to source-replica",
    )
    .await?;
    assert_surface(&h, &role).await?;
    h.stop().await
}
