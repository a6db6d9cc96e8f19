//! The whole workflow, in-process, against the real local stack: exporters, importers
//! and the coordinator of one migration; writes before and after every cutover.
//!
//! - live migration: cutover to target; the target equals the source at COMPLETED and
//!   its sequences continue above the source's;
//! - fall-back: cutover to target, writes on the target flow back to the source, cutover
//!   to source; equal at each COMPLETED; the report's counts equal the databases';
//! - fall-forward: the source-replica follows the source, then the target; cutover to
//!   source-replica;
//! - the coordinator killed and restarted over and over during a cutover: it completes;
//! - cutover to source before cutover to target: refused with the reason;
//! - a sequence whose last value is behind its column's values: set above them on the
//!   new primary, whose next value does not collide;
//! - writes that go on during the cutover: the target holds exactly those committed
//!   before the stop marker, with no gap;
//! - a target with `engine = "yugabytedb"` whose slot drop is refused for a while: the
//!   cutover back shows the step pending with the reason, and completes once allowed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use ferry_shared::topics::{Destination, Stream};
use ferry_testkit::wait_until;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_migration_cuts_over_with_sequences_and_refuses_out_of_order() -> Result<()> {
    let mut h = Harness::new("live").await?;
    // Before anything: cutover to source makes no sense yet.
    let (code, body) = h.cutover("source", "none").await?;
    assert_eq!(code, 409, "{body}");
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cutover to target to be COMPLETED first")
            && reason.contains("--prepare-for-fall-back"),
        "{reason}"
    );
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    writes(&h.source, "live", 40).await?;
    h.wait_equal(Side::Source, Side::Target, "before cutover")
        .await?;
    writes(&h.source, "late", 20).await?;
    // The importer is killed, then the cutover is requested: it waits for the drain,
    // saying so, and completes once the importer runs again.
    h.kill("importer target").await;
    writes(&h.source, "while down", 5).await?;
    h.wait_snapshot_done().await?;
    let (code, body) = h.cutover("target", "none").await?;
    assert_eq!(code, 200, "{body}");
    let waiting = h.wait_waiting_for("target", "target importer").await?;
    assert!(waiting.contains("ferry import data to target"), "{waiting}");
    assert_eq!(h.cutover_status("target").await?, "INITIATED");
    h.importer(Destination::Target);
    h.wait_completed("target", None).await?;

    // Equal right at COMPLETED, without waiting.
    for table in TABLES {
        assert_eq!(
            fingerprint(&h.source, table).await?,
            fingerprint(&h.target, table).await?,
            "{table} at COMPLETED"
        );
    }
    // The target's sequences continue above the source's.
    let src_orders = last_value(&h.source, "orders_id_seq").await?;
    assert_eq!(last_value(&h.target, "orders_id_seq").await?, src_orders);
    assert_eq!(last_value(&h.target, "invoice_no").await?, 506);
    h.target
        .batch_execute("INSERT INTO orders (customer, amount) VALUES (1, 1)")
        .await
        .context("an insert on the target after cutover")?;
    let (_, status) = h.api("GET", "/api/status", None).await?;
    let steps: Vec<&str> = status["migration"]["cutover_to_target"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "requested",
            "source-exporter-stopped",
            "target-importer-drained",
            "sequences-set-on-target",
            "source-slot-dropped"
        ]
    );
    let slots: i64 = h
        .source
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'ferry\\_%' AND database = current_database()", &[])
        .await?
        .get(0);
    assert_eq!(slots, 0, "the source slot is dropped");
    // A second request is refused: it is done.
    let (code, _) = h.cutover("target", "none").await?;
    assert_eq!(code, 409);
    h.stop().await
}

/// Per table: the report's rows by database.
fn report_rows(report: &Value, table: &str) -> Vec<Value> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["table"] == format!("public.{table}"))
        .cloned()
        .collect()
}

/// The report's counts equal the counts computed from the databases: final row counts
/// equal count(*), imported counts equal ferry_metadata.table_counts of the group.
async fn check_report(h: &Harness, prefix: &str) -> Result<()> {
    let (code, report) = h.api("GET", "/api/report", None).await?;
    assert_eq!(code, 200, "{report}");
    for table in TABLES {
        let rows = report_rows(&report, table);
        for row in &rows {
            let (client, group) = match row["database"].as_str().unwrap() {
                "source" => (&h.source, "source"),
                "target" => (&h.target, "target"),
                "source-replica" => (&h.replica, "source-replica"),
                other => panic!("database {other}"),
            };
            let count: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await?
                .get(0);
            assert_eq!(row["final_row_count"], json!(count), "{table}: {row}");
            let stored = client
                .query_opt(
                    "SELECT snapshot_rows, inserts, updates, deletes FROM ferry_metadata.table_counts \
                     WHERE consumer_group = $1 AND schema_name = 'public' AND table_name = $2",
                    &[&format!("{prefix}.import.{group}"), table],
                )
                .await
                .ok()
                .flatten();
            if let Some(r) = stored {
                let (s, i, u, d): (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
                assert_eq!(row["imported_inserts"], json!(i), "{table}: {row}");
                assert_eq!(row["imported_updates"], json!(u), "{table}: {row}");
                assert_eq!(row["imported_deletes"], json!(d), "{table}: {row}");
                if group != "source" {
                    assert_eq!(row["imported_snapshot_rows"], json!(s), "{table}: {row}");
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fall_back_round_trip_with_writes_on_both_sides() -> Result<()> {
    let mut h = Harness::new("fback").await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    // Started from the beginning; they wait until the cutover enables them.
    h.exporter(Stream::Target);
    h.importer(Destination::Source);
    writes(&h.source, "before", 30).await?;
    h.wait_equal(Side::Source, Side::Target, "before cutover")
        .await?;
    writes(&h.source, "late", 10).await?;
    h.wait_snapshot_done().await?;
    let (code, body) = h.cutover("target", "fall-back").await?;
    assert_eq!(code, 200, "{body}");
    // Cutover to source is refused while cutover to target is in progress.
    let (code, body) = h.cutover("source", "none").await?;
    assert_eq!(code, 409, "{body}");
    h.wait_completed("target", None).await?;
    for table in TABLES {
        assert_eq!(
            fingerprint(&h.source, table).await?,
            fingerprint(&h.target, table).await?,
            "{table} at COMPLETED of cutover to target"
        );
    }
    // The application now writes on the target; the sequence continues.
    writes(&h.target, "on target", 30).await?;
    let max_target: i64 = h
        .target
        .query_one("SELECT max(id) FROM orders", &[])
        .await?
        .get(0);
    h.wait_equal(Side::Target, Side::Source, "fall-back stream")
        .await?;
    check_report(&h, h.config.migration.topic_prefix().as_str()).await?;
    let (code, body) = h.cutover("source", "none").await?;
    assert_eq!(code, 200, "{body}");
    h.wait_completed("source", None).await?;
    for table in TABLES {
        assert_eq!(
            fingerprint(&h.target, table).await?,
            fingerprint(&h.source, table).await?,
            "{table} at COMPLETED of cutover to source"
        );
    }
    // Back on the source: its sequence continues above the target's.
    let id: i64 = h
        .source
        .query_one(
            "INSERT INTO orders (customer, amount) VALUES (1, 1) RETURNING id",
            &[],
        )
        .await?
        .get(0);
    assert!(id > max_target, "{id} <= {max_target}");
    // The report: exported from the source, imported into the target, exported back.
    let (_, report) = h.api("GET", "/api/report", None).await?;
    let rows = report_rows(&report, "orders");
    let target_row = rows.iter().find(|r| r["database"] == "target").unwrap();
    let source_row = rows.iter().find(|r| r["database"] == "source").unwrap();
    assert_eq!(target_row["exported_inserts"], json!(30), "{target_row}");
    assert_eq!(source_row["imported_inserts"], json!(30), "{source_row}");
    // What the source exported is what the target imported (writes made before the
    // exporter's slot existed are in the snapshot, the rest are changes).
    for field in ["inserts", "updates", "deletes"] {
        assert_eq!(
            source_row[format!("exported_{field}")],
            target_row[format!("imported_{field}")],
            "{field}: {source_row} {target_row}"
        );
    }
    assert_eq!(
        source_row["exported_snapshot_rows"], target_row["imported_snapshot_rows"],
        "{source_row} {target_row}"
    );
    let changes = source_row["exported_inserts"].as_i64().unwrap()
        + source_row["exported_snapshot_rows"].as_i64().unwrap();
    assert!(changes >= 3010, "{source_row}");
    check_report(&h, h.config.migration.topic_prefix().as_str()).await?;
    // No Ferry slot is left on either side.
    for c in [&h.source, &h.target] {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'ferry\\_%' AND database = current_database()", &[])
            .await?
            .get(0);
        assert_eq!(n, 0);
    }
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fall_forward_with_the_coordinator_killed_throughout_the_cutovers() -> Result<()> {
    let mut h = Harness::new("ffwd").await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.importer(Destination::SourceReplica);
    h.exporter(Stream::Target);
    writes(&h.source, "before", 30).await?;
    h.wait_equal(Side::Source, Side::Target, "before cutover")
        .await?;
    h.wait_equal(Side::Source, Side::Replica, "replica before cutover")
        .await?;
    writes(&h.source, "late", 10).await?;
    h.wait_snapshot_done().await?;
    let (code, body) = h.cutover("target", "fall-forward").await?;
    assert_eq!(code, 200, "{body}");
    // Killed and restarted every 700 ms until COMPLETED: each step is re-derived from
    // Kafka and the databases.
    let restarts = h
        .wait_completed("target", Some(Duration::from_millis(400)))
        .await?;
    assert!(restarts >= 1, "the coordinator was never restarted");
    for table in TABLES {
        let s = fingerprint(&h.source, table).await?;
        assert_eq!(s, fingerprint(&h.target, table).await?, "{table} target");
    }
    writes(&h.target, "on target", 30).await?;
    h.wait_equal(Side::Target, Side::Replica, "fall-forward stream")
        .await?;
    let (code, body) = h.cutover("source-replica", "none").await?;
    assert_eq!(code, 200, "{body}");
    let restarts = h
        .wait_completed("source-replica", Some(Duration::from_millis(400)))
        .await?;
    assert!(restarts >= 1, "the coordinator was never restarted");
    for table in TABLES {
        assert_eq!(
            fingerprint(&h.target, table).await?,
            fingerprint(&h.replica, table).await?,
            "{table} at COMPLETED of cutover to source-replica"
        );
    }
    let target_seq = last_value(&h.target, "orders_id_seq").await?;
    assert_eq!(last_value(&h.replica, "orders_id_seq").await?, target_seq);
    h.replica
        .batch_execute("INSERT INTO orders (customer, amount) VALUES (1, 1)")
        .await
        .context("an insert on the source-replica after cutover")?;
    check_report(&h, h.config.migration.topic_prefix().as_str()).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_configured_workflow_shows_from_the_start_and_a_contradicting_flag_is_refused(
) -> Result<()> {
    let mut h = Harness::new("wflow").await?;
    let (_, s) = h.api("GET", "/api/status", None).await?;
    assert_eq!(s["migration"]["workflow"], "live", "{s:#}");
    // The configuration says fall-back: the restarted coordinator shows it at once.
    h.kill_coordinator().await;
    h.config.migration.workflow = ferry_shared::config::Workflow::FallBack;
    h.start_coordinator().await?;
    let (_, s) = h.api("GET", "/api/status", None).await?;
    assert_eq!(s["migration"]["workflow"], "fall-back", "{s:#}");

    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.exporter(Stream::Target);
    h.importer(Destination::Source);
    writes(&h.source, "wf", 10).await?;
    h.wait_equal(Side::Source, Side::Target, "before cutover")
        .await?;
    h.wait_snapshot_done().await?;
    let (code, body) = h.cutover("target", "fall-forward").await?;
    assert_eq!(code, 409, "{body}");
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains(
            "--prepare-for-fall-forward contradicts this migration's workflow, fall-back"
        ),
        "{reason}"
    );
    assert_eq!(h.cutover_status("target").await?, "NOT_INITIATED");
    // Without a flag the cutover prepares for the configured fall-back.
    let (code, body) = h.cutover("target", "none").await?;
    assert_eq!(code, 200, "{body}");
    h.wait_completed("target", None).await?;
    let (_, s) = h.api("GET", "/api/status", None).await?;
    assert_eq!(s["migration"]["workflow"], "fall-back", "{s:#}");
    writes(&h.target, "back", 5).await?;
    h.wait_equal(Side::Target, Side::Source, "fall-back flows")
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_importer_stopped_by_a_definite_error_shows_failed_with_its_error_until_it_runs_again(
) -> Result<()> {
    let mut h = Harness::new("failvis").await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    writes(&h.source, "ok", 5).await?;
    h.wait_equal(Side::Source, Side::Target, "before the failure")
        .await?;
    // The target loses a column the stream carries: a definite error.
    h.target
        .batch_execute("ALTER TABLE customers DROP COLUMN tags")
        .await?;
    writes(&h.source, "breaks", 5).await?;
    let failed = wait_until(
        "status to show the target importer failed",
        Duration::from_secs(90),
        || {
            let h = &h;
            async move {
                let (_, s) = h.api("GET", "/api/status", None).await?;
                let target = s["importers"]
                    .as_array()
                    .and_then(|a| a.iter().find(|i| i["destination"] == "target"))
                    .cloned()
                    .unwrap_or_default();
                let failed = target["instance_states"]
                    .as_array()
                    .and_then(|a| a.iter().find(|i| i["state"] == "failed"))
                    .cloned();
                Ok(failed.map(|f| (f, target["instances"].clone())))
            }
        },
    )
    .await?;
    let (instance, running) = failed;
    assert_eq!(running, 0, "{instance}");
    let message = instance["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(instance["error"]["kind"], "definite", "{instance}");
    assert!(
        message.contains("customers") && message.contains("tags"),
        "{message}"
    );
    assert!(
        instance["last_seen_ms"].as_i64().unwrap_or(0) > 0,
        "{instance}"
    );
    let metrics = h
        .http
        .get(format!("http://{}/metrics", h.listen))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("ferry_importer_instances{destination=\"target\",state=\"failed\"} 1"),
        "{metrics}"
    );
    // A cutover waiting on it says so, with the error and the command.
    h.kill("importer target").await;
    h.wait_snapshot_done().await?;
    let (code, body) = h.cutover("target", "none").await?;
    assert_eq!(code, 200, "{body}");
    let waiting = h.wait_waiting_for("target", "FAILED").await?;
    assert!(
        waiting.contains("tags") && waiting.contains("ferry import data to target"),
        "{waiting}"
    );
    // Fixed and started again: it runs, the failure is gone, the cutover completes.
    h.target
        .batch_execute("ALTER TABLE customers ADD COLUMN tags text[]")
        .await?;
    h.importer(Destination::Target);
    h.wait_completed("target", None).await?;
    wait_until(
        "the failure to leave the status once the importer runs again",
        Duration::from_secs(30),
        || {
            let h = &h;
            async move {
                let (_, s) = h.api("GET", "/api/status", None).await?;
                let states = s["importers"][0]["instance_states"].to_string();
                Ok(
                    (!states.contains("\"failed\"") && states.contains("\"instance\""))
                        .then_some(()),
                )
            }
        },
    )
    .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sequence_behind_its_rows_is_set_above_them_on_the_new_primary() -> Result<()> {
    let mut h = Harness::new("seqbehind").await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    writes(&h.source, "live", 10).await?;
    // Rows inserted with explicit ids far above the sequence: its last value stays
    // behind the rows.
    h.source
        .batch_execute(
            "INSERT INTO orders (id, customer, amount) VALUES (100000, 1, 1), (100001, 2, 2)",
        )
        .await?;
    let behind = last_value(&h.source, "orders_id_seq").await?;
    assert!(behind < 100_000, "{behind}");
    h.wait_equal(Side::Source, Side::Target, "before cutover")
        .await?;
    h.wait_snapshot_done().await?;
    h.cutover_completed("target", "none").await?;
    // On the new primary the next value does not collide with a row.
    let next: i64 = h
        .target
        .query_one(
            "INSERT INTO orders (customer, amount) VALUES (3, 3) RETURNING id",
            &[],
        )
        .await
        .context("an insert on the new primary")?
        .get(0);
    assert!(next > 100_001, "{next}");
    // A sequence that feeds no column keeps the old primary's value.
    assert_eq!(
        last_value(&h.target, "invoice_no").await?,
        last_value(&h.source, "invoice_no").await?
    );
    let (_, status) = h.api("GET", "/api/status", None).await?;
    let step = status["migration"]["cutover_to_target"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "sequences-set-on-target")
        .cloned()
        .unwrap();
    assert!(
        step["description"]
            .as_str()
            .unwrap()
            .contains("1 of them raised to the largest value in their columns"),
        "{step}"
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_going_on_during_the_cutover_reach_the_target_exactly_up_to_the_stop_marker(
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut h = Harness::new("unquiesced").await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.wait_snapshot_done().await?;
    // One session inserts customers one at a time, each in a transaction of its own:
    // commit order is id order. It goes on through the cutover and after it.
    let (writer, connection) = h.config.source.as_ref().unwrap().connect().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        let mut id = 10_000i32;
        while !stopping.load(Ordering::Relaxed) {
            writer
                .execute("INSERT INTO customers (id, name) VALUES ($1, 'w')", &[&id])
                .await?;
            id += 1;
        }
        anyhow::Ok(id - 10_000)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, body) = h.cutover("target", "none").await?;
    assert_eq!(code, 200, "{body}");
    h.wait_completed("target", None).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let written = task.await??;
    connection.abort();
    let on_source = written_ids(&h.source).await?;
    let on_target = written_ids(&h.target).await?;
    assert_eq!(on_source.len(), written as usize);
    // A prefix of the writes, without a gap: every write committed before the marker,
    // none after it (those stay on the old primary).
    let k = on_target.len();
    assert!(
        k > 0 && k < on_source.len(),
        "writes before and after the marker: {k} of {} on the target",
        on_source.len()
    );
    assert_eq!(on_target[..], on_source[..k]);
    // How many were committed after the marker is said: in the step, and in the
    // report (a lower bound: the exporter counts until it has caught up).
    let (_, status) = h.api("GET", "/api/status", None).await?;
    let step = status["migration"]["cutover_to_target"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "source-exporter-stopped")
        .cloned()
        .unwrap();
    let description = step["description"].as_str().unwrap().to_owned();
    let after: usize = description
        .split("; ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after the marker in {description:?}"));
    assert!(
        after > 0 && after <= on_source.len() - k,
        "{after} after the marker, {} written after it: {description}",
        on_source.len() - k
    );
    let (_, report) = h.api("GET", "/api/report", None).await?;
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("after the cutover's stop marker were not exported"),
        "{notes}"
    );
    // The marker is a row on the source, not a logical message.
    let markers: i64 = h
        .source
        .query_one(
            "SELECT count(*) FROM ferry_metadata.stop_markers WHERE stream = 'source'",
            &[],
        )
        .await?
        .get(0);
    assert!(markers >= 1, "{markers}");
    h.stop().await
}

/// The ids of the customers the writer of the test above inserted, in order.
async fn written_ids(client: &tokio_postgres::Client) -> Result<Vec<i32>> {
    Ok(client
        .query(
            "SELECT id FROM customers WHERE id >= 10000 ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, i32>(0))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_slot_drop_is_pending_with_its_reason_until_the_database_allows_it() -> Result<()>
{
    let mut h = Harness::new("ybslot").await?;
    // The target as YugabyteDB: its slot is dropped without looking at `active_pid`
    // and without ending sessions; a refusal waits.
    h.kill_coordinator().await;
    h.config.target.as_mut().unwrap().engine = ferry_shared::config::Engine::Yugabytedb;
    h.start_coordinator().await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.exporter(Stream::Target);
    h.importer(Destination::Source);
    writes(&h.source, "before", 10).await?;
    h.wait_equal(Side::Source, Side::Target, "before cutover")
        .await?;
    h.wait_snapshot_done().await?;
    h.cutover_completed("target", "fall-back").await?;
    writes(&h.target, "on target", 10).await?;
    h.wait_equal(Side::Target, Side::Source, "fall-back stream")
        .await?;
    // The source importer is down while the cutover back starts: the drain waits, and
    // meanwhile a consumer holds the target slot (as a YugabyteDB slot stays
    // undroppable for a while after its consumer stopped).
    h.kill("importer source").await;
    writes(&h.target, "while the importer is down", 3).await?;
    let (code, body) = h.cutover("source", "none").await?;
    assert_eq!(code, 200, "{body}");
    h.wait_waiting_for("source", "source importer").await?;
    let target = h.config.target.clone().unwrap();
    let slot = ferry_shared::topics::slot_name(&h.config.migration.id, Stream::Target);
    let mut holder = tokio::process::Command::new("pg_recvlogical")
        .args(["-h", &target.host, "-p", &target.port().to_string()])
        .args(["-U", &target.user, "-d", &target.database])
        .args(["--slot", &slot, "--start", "-f", "/dev/null"])
        .args(["-o", "proto_version=1"])
        .args(["-o", &format!("publication_names={slot}")])
        .env("PGPASSWORD", target.password.expose())
        .kill_on_drop(true)
        .spawn()
        .context("running pg_recvlogical (PostgreSQL client tools)")?;
    wait_until(
        "pg_recvlogical to hold the target slot",
        Duration::from_secs(30),
        || {
            let (client, slot) = (&h.target, slot.clone());
            async move {
                let active: bool = client
                    .query_one(
                        "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await?
                    .get(0);
                Ok(active.then_some(()))
            }
        },
    )
    .await?;
    h.importer(Destination::Source);
    let waiting = h.wait_waiting_for("source", "to allow dropping").await?;
    assert!(
        waiting.contains("pending") && waiting.contains(&slot) && waiting.contains("refused"),
        "{waiting}"
    );
    assert_eq!(h.cutover_status("source").await?, "INITIATED");
    // The database allows it again: the cutover completes.
    holder.kill().await?;
    h.wait_completed("source", None).await?;
    h.assert_equal_now(
        Side::Target,
        Side::Source,
        "at COMPLETED of cutover to source",
    )
    .await?;
    let gone: i64 = h
        .target
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .get(0);
    assert_eq!(gone, 0, "the target slot is dropped");
    h.stop().await
}
