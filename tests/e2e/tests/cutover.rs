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
//! - cutover to source before cutover to target: refused with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_shared::config::Config;
use ferry_shared::shutdown::{self, ShutdownTrigger};
use ferry_shared::topics::{Destination, Stream};
use ferry_testkit::{free_port, unique_name, wait_until, Stack};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

const DDL: &str = "
    CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL,
                         amount numeric(10,2), note text, placed timestamptz NOT NULL DEFAULT now());
    CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, tags text[]);
    CREATE SEQUENCE invoice_no START 500;
";
const SOURCE_ONLY: &str = "
    ALTER TABLE orders REPLICA IDENTITY FULL;
    ALTER TABLE customers REPLICA IDENTITY FULL;
";
const TABLES: &[&str] = &["orders", "customers"];

type Task = JoinHandle<Result<()>>;

struct Harness {
    config: Config,
    listen: String,
    source: Client,
    target: Client,
    replica: Client,
    http: reqwest::Client,
    services: ShutdownTrigger,
    tasks: Vec<(String, Task)>,
    coordinator: Option<(ShutdownTrigger, JoinHandle<()>)>,
}

impl Harness {
    async fn new(name: &str) -> Result<Harness> {
        let stack = Stack::get();
        let source_db = stack.source.create_database(&format!("{name}_s")).await?;
        let target_db = stack.target.create_database(&format!("{name}_t")).await?;
        let replica_db = stack
            .source_replica
            .create_database(&format!("{name}_r"))
            .await?;
        let source = stack.source.connect(&source_db).await?;
        let target = stack.target.connect(&target_db).await?;
        let replica = stack.source_replica.connect(&replica_db).await?;
        for c in [&source, &target, &replica] {
            c.batch_execute(DDL).await?;
        }
        source.batch_execute(SOURCE_ONLY).await?;
        source
            .batch_execute(
                "INSERT INTO customers SELECT g, 'c' || g, ARRAY['t' || g] FROM generate_series(1, 300) g;
                 INSERT INTO orders (customer, amount, note) SELECT g % 300 + 1, g * 1.25, 'seed' FROM generate_series(1, 3000) g;
                 SELECT nextval('invoice_no') FROM generate_series(1, 7);",
            )
            .await?;
        let id = unique_name(name);
        let listen = format!("127.0.0.1:{}", free_port());
        let text = stack.config_toml(&id, &source_db, &target_db, &replica_db, &listen);
        let config = Config::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (services, _) = shutdown::channel();
        let mut h = Harness {
            config,
            listen,
            source,
            target,
            replica,
            http: reqwest::Client::new(),
            services,
            tasks: Vec::new(),
            coordinator: None,
        };
        h.start_coordinator().await?;
        Ok(h)
    }

    async fn start_coordinator(&mut self) -> Result<()> {
        let (trigger, stop) = shutdown::channel();
        let config = self.config.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = ferry_coordinator::run(config, stop).await {
                eprintln!("coordinator stopped: {e}");
            }
        });
        self.coordinator = Some((trigger, task));
        let listen = self.listen.clone();
        ferry_testkit::wait_listening(&listen, Duration::from_secs(60)).await
    }

    /// Kills the coordinator (no graceful stop).
    async fn kill_coordinator(&mut self) {
        if let Some((_, task)) = self.coordinator.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn exporter(&mut self, stream: Stream) {
        let (config, stop) = (self.config.clone(), self.services.subscribe());
        self.tasks.push((
            format!("exporter {stream}"),
            tokio::spawn(async move {
                ferry_exporter::run_for(stream, config, stop)
                    .await
                    .map_err(anyhow::Error::from)
            }),
        ));
    }

    fn importer(&mut self, destination: Destination) {
        let (config, stop) = (self.config.clone(), self.services.subscribe());
        self.tasks.push((
            format!("importer {destination}"),
            tokio::spawn(async move {
                ferry_importer::run_for(destination, config, stop)
                    .await
                    .map_err(anyhow::Error::from)
            }),
        ));
    }

    /// Kills a service task (no graceful stop: connections drop mid-transaction).
    async fn kill(&mut self, name: &str) {
        if let Some(i) = self.tasks.iter().position(|(n, _)| n == name) {
            let (_, task) = self.tasks.remove(i);
            task.abort();
            let _ = task.await;
        }
    }

    /// Fails when a service stopped with an error.
    async fn check_services(&mut self) -> Result<()> {
        check(&mut self.tasks).await
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let url = format!("http://{}{path}", self.listen);
        let req = match method {
            "POST" => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or(json!({})).to_string()),
            _ => self.http.get(url),
        };
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).context("a JSON answer")?,
        ))
    }

    async fn cutover(&self, to: &str, prepare_for: &str) -> Result<(u16, Value)> {
        self.api(
            "POST",
            "/api/cutover",
            Some(json!({ "to": to, "prepare_for": prepare_for })),
        )
        .await
    }

    /// Waits until the coordinator has read a source checkpoint saying the snapshot is
    /// done (a cutover to target is refused before; the target can already equal the
    /// source while that checkpoint is on its way).
    async fn wait_snapshot_done(&self) -> Result<()> {
        wait_until(
            "the coordinator to see the source snapshot done",
            Duration::from_secs(60),
            || async {
                let (_, s) = self.api("GET", "/api/status", None).await?;
                let done = s["streams"].as_array().is_some_and(|streams| {
                    streams
                        .iter()
                        .any(|st| st["stream"] == "source" && st["snapshot_done"] == true)
                });
                Ok(done.then_some(()))
            },
        )
        .await
    }

    async fn cutover_status(&self, to: &str) -> Result<String> {
        let (_, s) = self.api("GET", "/api/status", None).await?;
        let key = format!("cutover_to_{}", to.replace('-', "_"));
        Ok(s["migration"][&key]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Waits for COMPLETED (checking the services on the way); `restart_every`
    /// kills and restarts the coordinator at that interval meanwhile.
    async fn wait_completed(&mut self, to: &str, restart_every: Option<Duration>) -> Result<usize> {
        let start = std::time::Instant::now();
        let mut last_restart = std::time::Instant::now();
        let mut restarts = 0;
        loop {
            self.check_services().await?;
            if let Some(every) = restart_every {
                if last_restart.elapsed() >= every {
                    self.kill_coordinator().await;
                    self.start_coordinator().await?;
                    last_restart = std::time::Instant::now();
                    restarts += 1;
                }
            }
            if let Ok(status) = self.cutover_status(to).await {
                if status == "COMPLETED" {
                    if restart_every.is_some() {
                        eprintln!(
                            "cutover to {to} completed across {restarts} coordinator restarts"
                        );
                    }
                    return Ok(restarts);
                }
            }
            if start.elapsed() > Duration::from_secs(240) {
                let (_, s) = self.api("GET", "/api/status", None).await?;
                bail!("cutover to {to} did not complete in 240 s: {s:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_equal(&mut self, a: Side, b: Side, what: &str) -> Result<()> {
        let Harness {
            tasks,
            source,
            target,
            replica,
            ..
        } = self;
        let pick = |side: Side| -> &Client {
            match side {
                Side::Source => source,
                Side::Target => target,
                Side::Replica => replica,
            }
        };
        let (a, b) = (pick(a), pick(b));
        for table in TABLES {
            let expected = fingerprint(a, table).await?;
            let mut last = None;
            for _ in 0..900 {
                check(tasks).await?;
                let actual = fingerprint(b, table).await?;
                if actual == expected {
                    last = None;
                    break;
                }
                last = Some(actual);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if let Some(actual) = last {
                bail!("{what}: table {table} differs: expected {expected:?}, found {actual:?}");
            }
        }
        Ok(())
    }

    async fn stop(mut self) -> Result<()> {
        self.services.trigger();
        for (name, task) in self.tasks.drain(..) {
            task.await?.with_context(|| name.clone())?;
        }
        if let Some((trigger, task)) = self.coordinator.take() {
            trigger.trigger();
            task.await?;
        }
        Ok(())
    }
}

#[derive(Copy, Clone, Debug)]
enum Side {
    Source,
    Target,
    Replica,
}

/// Fails when a service stopped with an error.
async fn check(tasks: &mut Vec<(String, Task)>) -> Result<()> {
    let mut i = 0;
    while i < tasks.len() {
        if tasks[i].1.is_finished() {
            let (name, task) = tasks.remove(i);
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("{name} failed: {e:#}"),
                Err(e) => bail!("{name} panicked: {e}"),
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Row count and a digest of the table's rows of the table's rows.
async fn fingerprint(client: &Client, table: &str) -> Result<(i64, String)> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY id)), '') FROM {table} t"
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Writes that exercise inserts (by the sequence), updates and deletes.
async fn writes(client: &Client, tag: &str, rounds: i64) -> Result<()> {
    for i in 0..rounds {
        client
            .batch_execute(&format!(
                "BEGIN;
                 INSERT INTO orders (customer, amount, note) VALUES ({c}, {i}.50, '{tag}');
                 UPDATE orders SET amount = amount + 1, note = '{tag} upd' WHERE id = (SELECT min(id) FROM orders WHERE note IS DISTINCT FROM '{tag} upd');
                 UPDATE customers SET tags = tags || '{tag}'::text WHERE id = {c};
                 DELETE FROM orders WHERE id = (SELECT max(id) FROM orders WHERE note = 'seed');
                 COMMIT;",
                c = i % 300 + 1
            ))
            .await
            .with_context(|| format!("writes {tag} round {i}"))?;
    }
    Ok(())
}

async fn last_value(client: &Client, seq: &str) -> Result<i64> {
    Ok(client
        .query_one(&format!("SELECT last_value FROM {seq}"), &[])
        .await?
        .get(0))
}

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
    let waiting = wait_until(
        "the cutover to wait for the importer",
        Duration::from_secs(60),
        || {
            let h = &h;
            async move {
                let (_, s) = h.api("GET", "/api/status", None).await?;
                let w = s["migration"]["cutover_to_target"]["waiting_for"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                Ok(Some(w).filter(|w| w.contains("target importer")))
            }
        },
    )
    .await?;
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
