//! The whole workflow in-process against real servers: the harness of the end-to-end
//! tests (`cutover.rs`, `kafka_faults.rs`). Exporters, importers and the coordinator of
//! one migration run as tasks of the test; each test has its own databases, topics and
//! consumer groups.

#![allow(dead_code)] // each test file uses a part of it
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

pub const DDL: &str = "
    CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL,
                         amount numeric(10,2), note text, placed timestamptz NOT NULL DEFAULT now());
    CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, tags text[]);
    CREATE SEQUENCE invoice_no START 500;
";
pub const SOURCE_ONLY: &str = "
    ALTER TABLE orders REPLICA IDENTITY FULL;
    ALTER TABLE customers REPLICA IDENTITY FULL;
";
pub const TABLES: &[&str] = &["orders", "customers"];

const SEED: &str = "
    INSERT INTO customers SELECT g, 'c' || g, ARRAY['t' || g] FROM generate_series(1, 300) g;
    INSERT INTO orders (customer, amount, note) SELECT g % 300 + 1, g * 1.25, 'seed' FROM generate_series(1, 3000) g;
    SELECT nextval('invoice_no') FROM generate_series(1, 7);
";

/// What a harness migrates: the schema (made on the source, then on the target and the
/// source-replica by `ferry export schema` / `ferry import schema`), what is set on the
/// source only afterwards, the seed rows, the tables compared, and the schemas selected.
pub struct Schema {
    pub ddl: &'static str,
    pub source_only: &'static str,
    pub seed: &'static str,
    /// Qualified (quoted where needed) table names, compared row by row.
    pub tables: &'static [&'static str],
    /// `schemas = [...]` of each database section.
    pub schemas: &'static [&'static str],
}

/// The orders/customers schema most tests use.
pub const SHOP: Schema = Schema {
    ddl: DDL,
    source_only: SOURCE_ONLY,
    seed: SEED,
    tables: TABLES,
    schemas: &["public"],
};

pub type Task = JoinHandle<Result<()>>;

pub struct Harness {
    pub config: Config,
    pub listen: String,
    pub source: Client,
    pub target: Client,
    pub replica: Client,
    pub http: reqwest::Client,
    pub services: ShutdownTrigger,
    pub tasks: Vec<(String, Task)>,
    pub coordinator: Option<(ShutdownTrigger, JoinHandle<()>)>,
    pub tables: &'static [&'static str],
}

/// Makes the source's schema on the target and the source-replica the way an operator
/// does: `ferry export schema`, then `ferry import schema` and `--post-snapshot-import`
/// (the tests' tables are empty until the test starts: everything at once).
async fn move_schema(config: &Config, name: &str) -> Result<()> {
    use ferry_cli::schema::{export, import};
    let dir = std::env::temp_dir().join(unique_name(&format!("{name}_schema")));
    export::export_schema(config, &dir, false)
        .await
        .map_err(|e| anyhow::anyhow!("export schema: {e}"))?;
    for destination in [Destination::Target, Destination::SourceReplica] {
        let opts = import::ImportOptions {
            export_dir: dir.clone(),
            destination,
            post_snapshot: true,
            ignore_exist: false,
            include_grants: false,
        };
        let summary = import::import_schema(config, &opts)
            .await
            .map_err(|e| anyhow::anyhow!("import schema to the {destination}: {e}"))?;
        if !summary.failed.is_empty() {
            bail!(
                "import schema to the {destination}:\n{}",
                summary.render(&opts)
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// An HTTP client for the coordinator's API that sends the configuration's token
/// (`coordinator.token`, which the testkit's config carries) with every request.
pub fn coordinator_http(config: &Config) -> Result<reqwest::Client> {
    let token = ferry_shared::coordinator_access::client_token(&config.coordinator)?
        .context("the test configuration carries a coordinator token")?;
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    // A coordinator that accepts a request and never answers is a failure the test
    // names, not a hang.
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()?)
}

impl Harness {
    pub async fn new(name: &str) -> Result<Harness> {
        Harness::with_kafka(name, None).await
    }

    /// [`Harness::new`] with `kafka` as the body of the config's `[kafka]` section (a
    /// broker of the test's own, or the SASL_SSL listener); `None`: the shared broker.
    pub async fn with_kafka(name: &str, kafka: Option<String>) -> Result<Harness> {
        Harness::with(name, kafka, &SHOP).await
    }

    /// A harness migrating `schema` (see [`Schema`]).
    pub async fn with(name: &str, kafka: Option<String>, schema: &Schema) -> Result<Harness> {
        log_services();
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
        source.batch_execute(schema.ddl).await?;
        let id = unique_name(name);
        let listen = format!("127.0.0.1:{}", free_port());
        let text = match kafka {
            Some(kafka) => stack.config_toml_with_kafka(
                &id,
                &source_db,
                &target_db,
                &replica_db,
                &listen,
                &kafka,
            ),
            None => stack.config_toml(&id, &source_db, &target_db, &replica_db, &listen),
        };
        let schemas: Vec<String> = schema
            .schemas
            .iter()
            .map(|s| format!("\"{}\"", s.replace('"', "\\\"")))
            .collect();
        let text = text.replace(
            "schemas = [\"public\"]",
            &format!("schemas = [{}]", schemas.join(", ")),
        );
        let config = Config::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if !schema.ddl.trim().is_empty() {
            move_schema(&config, name).await?;
        }
        source.batch_execute(schema.source_only).await?;
        source.batch_execute(schema.seed).await?;
        let (services, _) = shutdown::channel();
        let http = coordinator_http(&config)?;
        let mut h = Harness {
            config,
            listen,
            source,
            target,
            replica,
            http,
            services,
            tasks: Vec::new(),
            coordinator: None,
            tables: schema.tables,
        };
        h.start_coordinator().await?;
        Ok(h)
    }

    pub async fn start_coordinator(&mut self) -> Result<()> {
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
    pub async fn kill_coordinator(&mut self) {
        if let Some((_, task)) = self.coordinator.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn exporter(&mut self, stream: Stream) {
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

    pub fn importer(&mut self, destination: Destination) {
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
    pub async fn kill(&mut self, name: &str) {
        if let Some(i) = self.tasks.iter().position(|(n, _)| n == name) {
            let (_, task) = self.tasks.remove(i);
            task.abort();
            let _ = task.await;
        }
    }

    /// Fails when a service stopped with an error.
    pub async fn check_services(&mut self) -> Result<()> {
        check(&mut self.tasks).await
    }

    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let url = format!("http://{}{path}", self.listen);
        let req = match method {
            "PUT" => self
                .http
                .put(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or(json!({})).to_string()),
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

    pub async fn cutover(&self, to: &str, prepare_for: &str) -> Result<(u16, Value)> {
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
    pub async fn wait_snapshot_done(&self) -> Result<()> {
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

    /// Waits until the cutover to `to` says it waits for something containing `needle`;
    /// returns the whole text.
    pub async fn wait_waiting_for(&self, to: &str, needle: &str) -> Result<String> {
        let key = format!("cutover_to_{}", to.replace('-', "_"));
        wait_until(
            &format!("the cutover to {to} to wait for {needle:?}"),
            Duration::from_secs(60),
            || {
                let key = key.clone();
                async move {
                    let (_, s) = self.api("GET", "/api/status", None).await?;
                    let w = s["migration"][&key]["waiting_for"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    Ok(Some(w).filter(|w| w.contains(needle)))
                }
            },
        )
        .await
    }

    pub async fn cutover_status(&self, to: &str) -> Result<String> {
        let (_, s) = self.api("GET", "/api/status", None).await?;
        let key = format!("cutover_to_{}", to.replace('-', "_"));
        Ok(s["migration"][&key]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Waits for COMPLETED (checking the services on the way); `restart_every`
    /// kills and restarts the coordinator at that interval meanwhile.
    pub async fn wait_completed(
        &mut self,
        to: &str,
        restart_every: Option<Duration>,
    ) -> Result<usize> {
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

    /// The client of `side`.
    pub fn client(&self, side: Side) -> &Client {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
            Side::Replica => &self.replica,
        }
    }

    /// Every compared table is equal on `a` and `b` now, without waiting (at COMPLETED).
    pub async fn assert_equal_now(&self, a: Side, b: Side, what: &str) -> Result<()> {
        for table in self.tables {
            let (left, right) = (
                fingerprint(self.client(a), table).await?,
                fingerprint(self.client(b), table).await?,
            );
            if left != right {
                bail!("{table} {what}: {left:?} on {a:?}, {right:?} on {b:?}");
            }
        }
        Ok(())
    }

    /// Requests the cutover to `to` (refused: an error) and waits until it is COMPLETED.
    pub async fn cutover_completed(&mut self, to: &str, prepare_for: &str) -> Result<()> {
        let (code, body) = self.cutover(to, prepare_for).await?;
        if code != 200 {
            bail!("cutover to {to} ({prepare_for}) answered {code}: {body}");
        }
        self.wait_completed(to, None).await?;
        Ok(())
    }

    pub async fn wait_equal(&mut self, a: Side, b: Side, what: &str) -> Result<()> {
        let Harness {
            tasks,
            source,
            target,
            replica,
            tables,
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
        for table in tables.iter() {
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

    /// Stops every service and the coordinator; each must stop within
    /// [`STOP_DEADLINE`] of being asked (a service that does not is a defect).
    pub async fn stop(mut self) -> Result<()> {
        self.services.trigger();
        for (name, task) in self.tasks.drain(..) {
            tokio::time::timeout(STOP_DEADLINE, task)
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{name} did not stop within {STOP_DEADLINE:?} of being asked")
                })??
                .with_context(|| name.clone())?;
        }
        if let Some((trigger, task)) = self.coordinator.take() {
            trigger.trigger();
            tokio::time::timeout(STOP_DEADLINE, task)
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the coordinator did not stop within {STOP_DEADLINE:?} of being asked"
                    )
                })??;
        }
        Ok(())
    }
}

/// With `FERRY_LOG` set (e.g. `FERRY_LOG=ferry_shared::state=debug,info`), the
/// in-process services log to stderr as the binaries do, uncaptured (so that the log
/// of a test that hangs shows too).
pub fn log_services() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// How long a service may take to stop once asked.
pub const STOP_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Copy, Clone, Debug)]
pub enum Side {
    Source,
    Target,
    Replica,
}

/// Fails when a service stopped with an error.
pub async fn check(tasks: &mut Vec<(String, Task)>) -> Result<()> {
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

/// Row count and a digest of the table's rows (in the order of their text form).
pub async fn fingerprint(client: &Client, table: &str) -> Result<(i64, String)> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Writes that exercise inserts (by the sequence), updates and deletes.
pub async fn writes(client: &Client, tag: &str, rounds: i64) -> Result<()> {
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

pub async fn last_value(client: &Client, seq: &str) -> Result<i64> {
    Ok(client
        .query_one(&format!("SELECT last_value FROM {seq}"), &[])
        .await?
        .get(0))
}
